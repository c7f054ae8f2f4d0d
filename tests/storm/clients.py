"""The storm's clients: writers that record every attempt, and the probe that finds writable nodes.

Each write inserts a unique id into ``ledger`` in its own transaction with
``synchronous_commit = on``, and follows tests/race.py's rule for what counts as acknowledged:
the client waits a bounded time (``timeout``) and never cancels a commit that waits for
synchronous replication; a commit that did not return in time, raised, or came back with the
warning "canceling wait for synchronous replication" is *unknown* (``info``), not acknowledged.
An error before COMMIT was sent (no connection, a read-only node) is a certain failure.

Two kinds of writer run side by side:

* **fresh** writers look for the primary every second and after every write that was not
  acknowledged: among the nodes that accept writes (``pg_is_in_recovery()`` false) they take
  the newest timeline, as a client that re-resolves its endpoint would;
* a **sticky** writer keeps writing to the node it found until that node certainly refuses (no
  connection, read-only): a client with a pooled connection that never heard of the failover.
  It is what sees a zombie primary acknowledging writes after another node was promoted.

A commit that hangs keeps its connection and its thread until the server answers or dies; a
writer starts no new write while :data:`INFLIGHT` of its own are hanging.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from tests.storm.checker import Op

WARNING = "canceling wait for synchronous replication"
INFLIGHT = 4  # hanging writes per writer before it waits
LEDGER = "CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY, writer text, node text, timeline int)"
INSERT = (
    "INSERT INTO ledger VALUES (%s, %s, %s, "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int) RETURNING timeline"
)


class Link:
    """One connection of one writer, with the notices its server sent during the current write."""

    def __init__(self, dsn: str) -> None:
        self.notices: list[str] = []
        self.conn = psycopg.connect(dsn, autocommit=False, connect_timeout=1, options="-c synchronous_commit=on")
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()


@dataclass(frozen=True)
class Seen:
    """What a probe saw on one node: whether it accepts writes, and on which timeline."""

    node: str
    writable: bool
    timeline: int


def probe(dsns: dict[str, str], timeout: float = 1.5) -> list[Seen]:
    """Every node that answered within ``timeout``, asked in parallel (an unanswered node is left out)."""
    found: list[Seen] = []
    lock = threading.Lock()

    def ask(node: str, dsn: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=1) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN 0 ELSE "
                    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
                ).fetchone()
        except psycopg.Error:
            return
        if row is not None:
            with lock:
                found.append(Seen(node, not bool(row[0]), int(row[1])))

    threads = [threading.Thread(target=ask, args=(n, d), daemon=True) for n, d in dsns.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return list(found)


def newest_writable(seen: list[Seen], turn: int) -> str | None:
    """The writable node on the newest timeline; ties are taken in turn (``turn``), so writers spread out."""
    writable = [s for s in seen if s.writable]
    if not writable:
        return None
    top = max(s.timeline for s in writable)
    names = sorted(s.node for s in writable if s.timeline == top)
    return names[turn % len(names)]


class History:
    """Every attempt of every writer, with unique ids from one counter; safe to use from many threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.ops: list[Op] = []
        self.pending: dict[int, tuple[str, str, float]] = {}  # id -> writer, node, start

    def now(self) -> float:
        """Seconds since the history began."""
        return self.clock() - self.t0

    def begin(self, writer: str, node: str) -> int:
        with self._lock:
            i = next(self._ids)
            self.pending[i] = (writer, node, self.now())
            return i

    def end(self, i: int, outcome: str, timeline: int = 0, note: str = "") -> None:
        with self._lock:
            writer, node, start = self.pending.pop(i)
            self.ops.append(Op(i, writer, node, start, self.now(), outcome, timeline, note))

    def snapshot(self) -> list[Op]:
        with self._lock:
            return list(self.ops)

    def last_ack(self) -> Op | None:
        with self._lock:
            return max((o for o in self.ops if o.outcome == "ok"), key=lambda o: o.end, default=None)


class Writer:
    """One client thread writing unique ids (see the module's docstring for ``sticky``) until :meth:`halt`."""

    def __init__(
        self,
        name: str,
        history: History,
        dsns: dict[str, str],
        *,
        sticky: bool,
        turn: int = 0,
        first: str | None = None,
        timeout: float = 2.0,
        pause: float = 0.05,
    ) -> None:
        self.name, self.history, self.dsns = name, history, dsns
        self.sticky, self.turn, self.timeout, self.pause = sticky, turn, timeout, pause
        self.target: str | None = first
        self.found_at = 0.0
        self.link: Link | None = None
        self.stop = threading.Event()
        self.inflight: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)

    def start(self) -> Writer:
        self.thread.start()
        return self

    def _find(self) -> None:
        self.target = newest_writable(probe(self.dsns), self.turn)
        self.found_at = time.monotonic()
        self._drop()

    def _drop(self) -> None:
        if self.link is not None:
            self.link.close()
        self.link = None

    def _run(self) -> None:
        while not self.stop.is_set():
            self.inflight = [t for t in self.inflight if t.is_alive()]
            if len(self.inflight) >= INFLIGHT:
                time.sleep(0.1)
                continue
            if self.target is None or (not self.sticky and time.monotonic() - self.found_at > 1.0):
                self._find()
                if self.target is None:
                    time.sleep(0.3)
                    continue
            outcome = self._write(self.target)
            if outcome != "ok" and (not self.sticky or outcome == "fail"):
                self.target = None
            time.sleep(self.pause)

    def _write(self, node: str) -> str:
        """One write to ``node``: its outcome (ok, fail, info), recorded in the history."""
        i = self.history.begin(self.name, node)
        result: dict[str, int | str | Link] = {}
        link, self.link = self.link, None  # a write that hangs keeps this connection; the next one opens another
        handover = threading.Lock()  # the writer takes the result, or gives up on it: never both
        given_up = threading.Event()

        def run(link: Link | None) -> None:
            try:
                if link is None:
                    link = Link(self.dsns[node])
                link.notices.clear()
                row = link.conn.execute(INSERT, (i, self.name, node)).fetchone()
            except psycopg.Error as e:
                result.update(outcome="fail", note=_first_line(e))  # COMMIT never sent: certainly not committed
                if link is not None:
                    link.close()
                return
            try:
                link.conn.commit()
            except psycopg.Error as e:
                result.update(outcome="info", note=_first_line(e))
                link.close()
                return
            if any(WARNING in n for n in link.notices):
                result.update(outcome="info", note=WARNING)
                link.close()
                return
            with handover:
                if given_up.is_set():
                    link.close()  # returned too late: nobody will use this connection again
                else:
                    result.update(outcome="ok", timeline=int(str(row[0])) if row else 0, link=link)

        t = threading.Thread(target=run, args=(link,), daemon=True)
        t.start()
        t.join(self.timeout)
        with handover:
            late = "outcome" not in result
            if late:
                given_up.set()
        if late:
            self.inflight.append(t)
            self.history.end(i, "info", note="timed out")  # not acknowledged in time; the commit may still land
            return "info"
        outcome, timeline, kept = result.get("outcome", "info"), result.get("timeline", 0), result.get("link")
        self.history.end(i, str(outcome), timeline if isinstance(timeline, int) else 0, str(result.get("note", "")))
        if isinstance(kept, Link):
            self.link = kept
        return str(outcome)

    def halt(self, settle: float = 10.0) -> None:
        """Stop writing; wait up to ``settle`` seconds for hanging writes to end (they stay ``info`` anyway)."""
        self.stop.set()
        self.thread.join(10)
        deadline = time.monotonic() + settle
        for t in self.inflight:
            t.join(max(0.0, deadline - time.monotonic()))
        self._drop()


def create_ledger(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        conn.execute(LEDGER)


def read_ledger(dsn: str) -> frozenset[int]:
    """Every id in the ledger of ``dsn``'s node (the final read)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        return frozenset(int(r[0]) for r in conn.execute("SELECT id FROM ledger").fetchall())


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
