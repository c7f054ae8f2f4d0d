"""One watch stream for every cluster a process serves: a prefix watch, dispatched per cluster.

A process that serves several clusters (sidecars of several clusters on one host, a fleet
exporter) makes their stores with :meth:`pgcohort.store.EtcdStore.for_cluster`; their
watches subscribe to this hub instead of each holding a stream. etcd then keeps one
connection, one watch and one progress notification per interval for the process, not one
per cluster, and the process decodes each change once however many of its watches follow
that cluster.

Each subscriber keeps :class:`~pgcohort.store.watch.RulesetWatch`'s promises:

* its first view comes from a linearizable read of its ruleset key (read in batches of up
  to :data:`BATCH` keys, one read-only transaction each, when many subscribe at once);
* views arrive in strictly increasing revision order, never twice;
* the stream resumes from the last revision it dispatched + 1 after an error, EOF, silence
  or member death, on the next endpoint, after a linearizable read that proves quorum;
* when that revision was compacted, every subscriber's key is read again (batched) and a
  subscriber whose ruleset moved jumps to the current one;
* nothing blocks forever: the stream has a read timeout (``silence``), ``close()`` wakes
  its subscriber at once.

A subscriber that falls :data:`QUEUE_LIMIT` views behind (its thread stopped consuming)
does not hold the others up: it leaves the hub for a stream of its own from its last
delivered revision + 1, so etcd replays what it missed. A prefix watch that etcd refuses
(a role that grants some clusters of the prefix, not all of it) sends every subscriber to
a stream of its own the same way.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any

import requests

from pgcohort.seams import Revision, View
from pgcohort.store.records import Records
from pgcohort.store.transport import Transport, Unanswered, b64, branch_kvs, get, prefix_end, short
from pgcohort.store.watch import (
    STREAM_ERRORS,
    LeaderHint,
    RulesetWatch,
    Silent,
    event_view,
    failure,
    kv_view,
    lines,
    open_stream,
    shutdown,
    watch_session,
)

log = logging.getLogger(__name__)

QUEUE_LIMIT = 256  # views a subscriber may have waiting before it leaves for a stream of its own
BATCH = 64  # ruleset keys per read-only transaction (etcd's --max-txn-ops is 128 by default)

_CLOSED = "closed"  # queue markers
_LEAVE = "leave"


@dataclass(frozen=True)
class _Reread:
    """A subscriber's key read again after the stream lost its place (compaction)."""

    view: View | None
    header: Revision


class _Compacted(Exception):
    pass


class _Denied(Exception):
    pass


@dataclass
class _Cluster:
    records: Records  # decodes the cluster's ruleset (its first subscriber's)
    subscribers: list[HubWatch] = field(default_factory=list)


class WatchHub:
    """The ruleset watches of every cluster under ``root`` (``<prefix>/``) on one stream."""

    def __init__(self, transport: Transport, root: str, leader: LeaderHint) -> None:
        self.transport = transport
        self.root = root
        self.leader = leader
        self.session = watch_session(transport)
        self._lock = threading.Lock()  # the clusters, the position, the thread, the pending reads
        self._clusters: dict[str, _Cluster] = {}  # by b64 of the ruleset key, as events name it
        self._pos: Revision | None = None  # every event up to this revision was dispatched
        self._thread: threading.Thread | None = None
        self._resp: requests.Response | None = None
        self._read_lock = threading.Lock()  # one batched read at a time
        # Subscribers whose key must be read (their first view, or again after compaction), in arrival order.
        self._pending: dict[HubWatch, None] = {}
        self._resync_low: Revision | None = None  # lowest header read since the stream lost its place
        self._resyncing = False
        self._denied = False

    def subscribe(self, records: Records, silence: float) -> HubWatch:
        return HubWatch(self, records, silence)

    def subscribers(self) -> int:
        with self._lock:
            return sum(len(c.subscribers) for c in self._clusters.values())

    # --- subscribers (their threads) -------------------------------------------------------

    def _attach(self, sub: HubWatch) -> bool:
        """Start dispatching to ``sub`` and queue its first read; False if the hub cannot serve it."""
        with self._lock:
            if self._denied:
                return False
            cluster = self._clusters.get(sub.key)
            if cluster is None:
                cluster = self._clusters[sub.key] = _Cluster(sub.records)
            cluster.subscribers.append(sub)
            self._pending[sub] = None
            return True

    def _detach(self, sub: HubWatch) -> None:
        with self._lock:
            self._forget(sub)
            resp = self._resp if not self._clusters else None
        if resp is not None:
            shutdown(resp)  # the last one left: stop the stream

    def _first_read(self, sub: HubWatch) -> None:
        """Block until ``sub``'s first read is done. Whoever finds no read under way reads everyone's
        pending keys, a batch at a time, until none is left (group commit); the others wait for theirs."""
        while sub.first is None and not sub.closed.is_set() and not sub.left:
            if not self._read_lock.acquire(blocking=False):
                sub.ready.wait(1.0)  # set when a batch read ours (or we close, or leave)
                continue
            try:
                while self._read_batch() is not None:
                    pass
            finally:
                self._read_lock.release()
            with self._lock:
                if sub.first is None and not sub.left:
                    self._pending.setdefault(sub)  # (never expected: every subscriber is pending until read)

    def _read_batch(self) -> Revision | None:
        """Read the keys of up to BATCH pending subscribers in one linearizable transaction
        (``_read_lock`` held); the header it was read at, or None if nobody was pending."""
        with self._lock:
            batch = list(itertools.islice(self._pending, BATCH))
            for s in batch:
                del self._pending[s]
        batch = [s for s in batch if not s.closed.is_set()]
        if not batch:
            return None
        records = {s.records.ruleset_key: s.records for s in batch}
        keys = list(records)
        try:
            resp = self.transport.request("kv/txn", {"compare": [], "success": [get(k) for k in keys], "failure": []})
        except Exception:
            with self._lock:  # read again, first, by whoever reads next
                self._pending = dict.fromkeys([*(s for s in batch if not s.left), *self._pending])
            raise
        header = Revision(int(resp["header"]["revision"]))
        views: dict[str, View | None] = {}
        for i, key in enumerate(keys):
            kvs = branch_kvs(resp, i)
            views[key] = kv_view(kvs[0], records[key]) if kvs else None
        with self._lock:
            for s in batch:
                view = views[s.records.ruleset_key]
                if s.first is None:
                    s.first = (view, header)
                elif not s.left and not s.offer(_Reread(view, header)):
                    self._leave(s)
            if self._resyncing:
                self._resync_low = header if self._resync_low is None else min(self._resync_low, header)
            if self._pos is None and self._thread is None and self._clusters:
                # The first read of an idle hub: the stream starts after it. Later reads are serialized
                # and linearizable, so their headers are >= this one.
                self._pos = header
                self._thread = threading.Thread(target=self._run, name="pgcohort-watch-hub", daemon=True)
                self._thread.start()
        for s in batch:
            s.ready.set()
        return header

    # --- the stream (the hub's thread) -----------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._lock:
                if not self._clusters:
                    self._thread, self._pos = None, None
                    return
            try:
                if self._resyncing:
                    self._resync()
                self._stream()
                backoff = 0.05
            except Silent:
                self.transport.count("watch_silences")
                continue
            except _Compacted:
                with self._lock:
                    self._resyncing, self._resync_low = True, None
                    for cluster in self._clusters.values():
                        self._pending.update(dict.fromkeys(cluster.subscribers))
            except _Denied as e:
                self._hand_over_all(str(e))
            except STREAM_ERRORS as e:
                if isinstance(e, requests.ReadTimeout):
                    self.transport.count("watch_silences")
                    continue
                with self._lock:
                    idle = not self._clusters
                if not idle:
                    log.info("watch hub on %s: %s; resyncing", self.transport.url(), short(str(e)))
                    threading.Event().wait(backoff)
                    backoff = min(backoff * 2, 1.0)
            self.transport.count("watch_resyncs")

    def _resync(self) -> None:
        """Read every subscriber's key again (the stream's start revision was compacted); the stream then
        resumes after the lowest header read, and every subscriber skips what its own read covered."""
        while True:
            with self._read_lock:
                if self._read_batch() is not None:
                    continue
                with self._lock:
                    if self._pending:
                        continue
                    if self._resync_low is not None:
                        self._pos = self._resync_low
                    self._resyncing, self._resync_low = False, None
                    return

    def _stream(self) -> None:
        with self._lock:
            if not self._clusters or self._pos is None:
                return
            probe = next(iter(self._clusters.values())).records.ruleset_key
            silence = min(s.silence for c in self._clusters.values() for s in c.subscribers)
            start = self._pos + 1
        transport = self.transport
        transport.range(probe)  # linearizable: proves this member has quorum (and renews a token)
        self.session.headers.update(transport.headers())
        create = {"key": b64(self.root), "range_end": b64(prefix_end(self.root)), "start_revision": start,
                  "progress_notify": True}  # fmt: skip
        resp, index = open_stream(transport, self.session, create, silence, self.leader)
        with self._lock:
            self._resp = resp
            idle = not self._clusters
        try:
            if idle:
                return
            for line in lines(resp):
                msg = json.loads(line)
                result = msg.get("result")
                if result is None:
                    failure(msg, transport, index)
                events = result.get("events")
                if events:
                    self._dispatch(events)
                elif result.get("compact_revision"):
                    raise _Compacted()
                elif result.get("canceled"):
                    reason = str(result.get("cancel_reason", ""))
                    if "permission denied" in reason:
                        raise _Denied(reason)
                    raise Unanswered(f"watch canceled: {reason or 'no reason given'}")
                with self._lock:
                    if not self._clusters:
                        return
            transport.failed(index)
            raise Unanswered("watch stream ended")
        except (*STREAM_ERRORS, Silent):
            self.leader.failed(index)  # ask who leads before the next stream
            raise
        finally:
            with self._lock:
                self._resp = None
            resp.close()

    def _dispatch(self, events: list[dict[str, Any]]) -> None:
        clusters = self._clusters
        views = []
        last = 0
        for ev in events:
            kv = ev["kv"]
            last = int(kv["mod_revision"])
            cluster = clusters.get(kv["key"])
            if cluster is not None:
                views.append((cluster, event_view(ev, cluster.records)))  # decoded once for every subscriber
        with self._lock:
            for cluster, view in views:
                for sub in list(cluster.subscribers):
                    if not sub.offer(view):
                        self._leave(sub)
            if self._pos is not None and last > self._pos:
                self._pos = Revision(last)

    def _forget(self, sub: HubWatch) -> None:
        """(Lock held.) Nothing is dispatched to ``sub`` any more; a cluster with no subscriber left is dropped."""
        cluster = self._clusters.get(sub.key)
        if cluster is not None and sub in cluster.subscribers:
            cluster.subscribers.remove(sub)
            if not cluster.subscribers:
                del self._clusters[sub.key]
        self._pending.pop(sub, None)

    def _leave(self, sub: HubWatch) -> None:
        """(Lock held.) ``sub`` stops following the hub; it continues on a stream of its own."""
        self._forget(sub)
        sub.left = True
        sub.queue.put(_LEAVE)
        sub.ready.set()

    def _hand_over_all(self, why: str) -> None:
        log.warning("etcd refused a watch of %s (%s): each cluster's watch uses a stream of its own", self.root,
                    short(why))  # fmt: skip
        with self._lock:
            self._denied = True
            for cluster in list(self._clusters.values()):
                for sub in list(cluster.subscribers):
                    self._leave(sub)


class HubWatch:
    """One cluster's ruleset watch served by a :class:`WatchHub` (implements ``pgcohort.seams.Watch``)."""

    def __init__(self, hub: WatchHub, records: Records, silence: float) -> None:
        self.hub = hub
        self.records = records
        self.silence = silence
        self.key = b64(records.ruleset_key)
        self.last: Revision | None = None  # the last revision delivered
        self.queue: SimpleQueue[View | _Reread | str] = SimpleQueue()
        self.first: tuple[View | None, Revision] | None = None  # the first read: its view and header
        self.ready = threading.Event()  # the first read is done (or closed, or left)
        self.closed = threading.Event()
        self.left = False  # the hub no longer serves this watch
        self._after = Revision(0)  # revisions up to here are covered by a read
        self._own: RulesetWatch | None = None  # the stream of its own, after leaving the hub
        self._started = False

    def offer(self, item: View | _Reread) -> bool:
        """(Hub lock held.) Queue ``item``; False if this subscriber is too far behind to stay."""
        if self.queue.qsize() >= QUEUE_LIMIT:
            return False
        self.queue.put(item)
        return True

    def close(self) -> None:
        self.closed.set()
        self.hub._detach(self)
        self.queue.put(_CLOSED)
        self.ready.set()
        own = self._own
        if own is not None:
            own.close()

    def __iter__(self) -> Iterator[View]:
        if self._started:
            raise RuntimeError("a watch is iterated once")
        self._started = True
        try:
            if not self.closed.is_set() and self.hub._attach(self):
                yield from self._from_hub()
        finally:
            self.hub._detach(self)  # closed, left, or the consumer dropped the iterator
        if self.closed.is_set():
            return
        # Left the hub (too far behind, or etcd refused the prefix watch): a stream of its own, from
        # the last revision covered, so etcd replays what was missed (or it jumps, if compacted).
        after = max(self.last or 0, self._after)
        since = Revision(after) if after else None
        self._own = RulesetWatch(self.hub.transport, self.records, since, self.silence, self.hub.leader)
        if self.closed.is_set():
            self._own.close()
        yield from self._own

    def _from_hub(self) -> Iterator[View]:
        backoff = 0.05
        while self.first is None:
            try:
                self.hub._first_read(self)
            except STREAM_ERRORS as e:
                log.info("watch of %s: %s; retrying", self.records.ruleset_key, short(str(e)))
                self.hub.transport.count("watch_resyncs")
                self.closed.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            if self.closed.is_set() or self.left:
                return
        view, self._after = self.first
        if view is not None:
            self.last = view.revision
            yield view
        while True:
            item = self.queue.get()
            if isinstance(item, str):
                return  # closed, or leaving the hub
            if isinstance(item, _Reread):  # read again after the stream lost its place
                view, header = item.view, item.header
            else:
                view, header = item, Revision(0)
            if view is not None and view.revision > max(self.last or 0, self._after):
                self.last = view.revision
                yield view
            self._after = max(self._after, header)
