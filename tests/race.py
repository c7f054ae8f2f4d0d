"""Shared pieces of the race and fault tests: an acknowledged-write ledger, the naive
orchestrator (written for the tests, the unsafe path), and a store view frozen in the past."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from pgcohort.adapters.postgres import PostgresNode
from pgcohort.core.rules import Member
from pgcohort.core.ruleset import Ruleset
from pgcohort.seams import Observation, Snapshot, Store, TermSnapshot
from tests.fakes import DelegatingStore

WARNING = "canceling wait for synchronous replication"


def connect(m: Member) -> PostgresNode:
    return PostgresNode(
        f"host={m.host} port={m.port} user=postgres dbname=postgres connect_timeout=2", connect_timeout=2
    )


def observe(m: Member) -> Observation:
    """What member ``m``'s PostgreSQL reports now, over a connection closed again."""
    node = connect(m)
    try:
        return node.observe()
    finally:
        node.close()


def create_ledger(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY, note text)")


def acked_write(dsn: str, id_: int, *, timeout: float = 5.0) -> bool:
    """INSERT one row with synchronous_commit = on; True only if the commit was acknowledged.

    The wait is bounded on the client side and never cancelled (a cancelled wait reports a
    commit no standby has); a commit that did not return in time counts as not acknowledged.
    """
    result: dict[str, Any] = {}

    def run() -> None:
        warnings: list[str] = []
        try:
            conn = psycopg.connect(dsn, autocommit=False, connect_timeout=2)
        except psycopg.Error:
            return
        try:
            conn.add_notice_handler(lambda d: warnings.append(d.message_primary or ""))
            conn.execute("SET synchronous_commit = on")
            conn.execute("INSERT INTO ledger VALUES (%s, 'w')", (id_,))
            conn.commit()
            result["ok"] = not any(WARNING in w for w in warnings)
        except psycopg.Error:
            pass
        finally:
            # Reached only once the commit returned or failed: a commit still waiting keeps its
            # connection (and this thread) until the server answers or dies.
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result.get("ok"))


class Writer:
    """Acknowledged writes to one primary from a thread, recorded by id, until :meth:`halt`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.acked: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            if acked_write(self.dsn, i, timeout=2.0):
                self.acked.add(i)
            else:
                time.sleep(0.05)

    def halt(self) -> set[int]:
        self.stop.set()
        self.thread.join(5)
        return set(self.acked)


def ledger_ids(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM ledger").fetchall()}


def naive_failover(view: Ruleset, old_primary: str, *, trust: str = "rule") -> str:
    """The unsafe orchestrator: it trusts one rule of its own view of the cohort.

    It revokes and surveys the standbys of that cohort, promotes the most advanced one, and
    records nothing. ``trust="rule"`` uses the view's current rule (ignoring a joint
    phase's previous rule).
    """
    cohort: Iterable[Member] = view.rule.cohort
    positions = {}
    for m in cohort:
        if m.name == old_primary:
            continue
        node = connect(m)
        try:
            positions[m.name] = node.revoke(timeout=5).lsn
        except Exception:  # noqa: BLE001 (an unreachable member is skipped, as a naive tool would)
            continue
        finally:
            node.close()
    best = max(sorted(positions), key=lambda n: positions[n])
    node = connect(next(m for m in view.rule.cohort if m.name == best))
    try:
        node.promote()
    finally:
        node.close()
    return best


class StaleOnce(DelegatingStore):
    """A store whose first read returns a view captured earlier (an orchestrator that read,
    then paused while others changed the ruleset). Everything else is the real store."""

    def __init__(self, store: Store, stale: tuple[Snapshot, TermSnapshot]) -> None:
        super().__init__(store)
        self._stale: tuple[Snapshot, TermSnapshot] | None = stale

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        if self._stale is not None:
            view, self._stale = self._stale, None
            return view
        return self.store.read_both()
