"""The watch loop against a real etcd cluster: ordering, catch-up, member death, compaction."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.core.rules import AnyK, Member
from pgcohort.store import EtcdStore, Revision, View
from pgcohort.store.watch import RulesetWatch, leader_index
from tests.conftest import make_store, three_members
from tests.servers import EtcdCluster, EtcdMember

pytestmark = pytest.mark.etcd


class Watcher:
    """A watch running in a thread, collecting what it sees."""

    def __init__(self, store: EtcdStore, since: Revision | None = None, silence: float = 10.0) -> None:
        self.watch = store.watch(since, silence=silence)
        self.views: queue.Queue[View] = queue.Queue()
        self.seen: list[Revision] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for view in self.watch:
            self.views.put(view)

    def until(self, revision: int, timeout: float = 15.0) -> list[Revision]:
        deadline = time.monotonic() + timeout
        while not self.seen or self.seen[-1] < revision:
            left = deadline - time.monotonic()
            assert left > 0, f"watcher saw {self.seen}, never reached revision {revision}"
            try:
                self.seen.append(self.views.get(timeout=left).revision)
            except queue.Empty:
                continue
        return self.seen

    def close(self) -> None:
        self.watch.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "watch did not stop on close()"

    def serving(self, etcd: EtcdCluster) -> EtcdMember:
        """The member this watch streams from (it prefers the leader)."""
        deadline = time.monotonic() + 10
        while (resp := self.watch._resp if isinstance(self.watch, RulesetWatch) else self.watch.hub._resp) is None:
            assert time.monotonic() < deadline, "no stream open"  # the first view is delivered before it opens
            time.sleep(0.01)
        return next(m for m in etcd.members if resp.url.startswith(m.url + "/"))


def changes(store: EtcdStore, n: int) -> Iterator[Revision]:
    """n commits: policy changes and their finalizes, alternating."""
    for _ in range(n):
        rs = store.read().ruleset
        if rs.phase == "joint":
            yield protocol.finalize(store, actor="t").snapshot.revision
        else:  # any 1 <-> any 2
            yield protocol.propose(store, core.SetPolicy(AnyK(3 - rs.rule.acks())), actor="t").snapshot.revision


def test_every_watcher_sees_the_same_sequence(etcd3: EtcdCluster, store: EtcdStore, cluster_name: str) -> None:
    first = protocol.init(store, three_members(), "pg0", actor="t").snapshot.revision
    watchers = [Watcher(make_store(etcd3, cluster_name)) for _ in range(4)]
    try:
        for w in watchers:
            w.until(first)
        revisions = list(changes(store, 20))
        seqs = [w.until(revisions[-1]) for w in watchers]
    finally:
        for w in watchers:
            w.close()
    assert all(seq == [first, *revisions] for seq in seqs), seqs


def test_stopped_watcher_catches_up_on_restart(store: EtcdStore) -> None:
    first = protocol.init(store, three_members(), "pg0", actor="t").snapshot.revision
    w = Watcher(store)
    last = w.until(first)[-1]
    w.close()
    missed = list(changes(store, 3))
    w2 = Watcher(store, since=last)  # restarted with the last revision it had processed
    try:
        assert w2.until(missed[-1]) == missed
    finally:
        w2.close()
    w3 = Watcher(store)  # restarted knowing nothing: starts from the current ruleset
    try:
        assert w3.until(missed[-1]) == [missed[-1]]
    finally:
        w3.close()


@pytest.mark.fault
def test_watcher_survives_its_member_being_killed(etcd_private: EtcdCluster, cluster_name: str) -> None:
    s = make_store(etcd_private, cluster_name)
    first = protocol.init(s, three_members(), "pg0", actor="t").snapshot.revision
    watcher_store = EtcdStore(etcd_private.endpoints, cluster_name, timeout=1, retry_for=15)
    w = Watcher(watcher_store)
    try:
        w.until(first)
        serving = w.serving(etcd_private)
        assert serving is etcd_private.leader()  # it streams from the leader
        etcd_private.kill(serving)
        writer = EtcdStore([m.url for m in etcd_private.members if m is not serving], cluster_name, timeout=2,
                           retry_for=15)  # fmt: skip
        revisions = list(changes(writer, 3))
        assert w.until(revisions[-1]) == [first, *revisions]
        assert w.serving(etcd_private) is not serving
        assert watcher_store.stats().watch_resyncs >= 1
    finally:
        w.close()


@pytest.mark.fault
def test_watcher_survives_the_leader_being_killed_and_restarted(etcd_private: EtcdCluster, cluster_name: str) -> None:
    s = make_store(etcd_private, cluster_name)
    first = protocol.init(s, three_members(), "pg0", actor="t").snapshot.revision
    w = Watcher(make_store(etcd_private, cluster_name))
    try:
        w.until(first)
        leader = etcd_private.leader()
        etcd_private.kill(leader)
        revisions = list(changes(s, 2))
        etcd_private.restart(leader)
        revisions += list(changes(s, 2))
        assert w.until(revisions[-1]) == [first, *revisions]
    finally:
        w.close()


def test_watcher_whose_start_revision_was_compacted_resyncs(etcd3: EtcdCluster, store: EtcdStore) -> None:
    first = protocol.init(store, three_members(), "pg0", actor="t").snapshot.revision
    revisions = list(changes(store, 4))
    etcd3.compact(revisions[-1])
    w = Watcher(store, since=first)  # first+1 .. are compacted away
    try:
        assert w.until(revisions[-1]) == [revisions[-1]]  # jumps to the current ruleset
        more = list(changes(store, 2))
        assert w.until(more[-1]) == [revisions[-1], *more]
        assert store.stats().watch_resyncs >= 1
    finally:
        w.close()


@pytest.mark.fault
def test_silent_member_is_left_for_another(etcd_private: EtcdCluster, cluster_name: str) -> None:
    """A paused (SIGSTOP) member sends nothing: the watcher notices the silence and moves on."""
    s = make_store(etcd_private, cluster_name)
    first = protocol.init(s, three_members(), "pg0", actor="t").snapshot.revision
    w = Watcher(EtcdStore(etcd_private.endpoints, cluster_name, timeout=1, retry_for=15), silence=2.0)
    w.until(first)
    paused = w.serving(etcd_private)  # the leader
    try:
        etcd_private.stop(paused)
        writer = EtcdStore([m.url for m in etcd_private.members if m is not paused], cluster_name, timeout=2,
                           retry_for=15)  # fmt: skip
        revisions = list(changes(writer, 2))
        assert w.until(revisions[-1], timeout=20) == [first, *revisions]
    finally:
        etcd_private.cont(paused)
        w.close()


def test_the_stream_is_on_the_leader_whichever_endpoint_comes_first(etcd3: EtcdCluster, cluster_name: str) -> None:
    leader = etcd3.leader()
    for first in etcd3.members:
        endpoints = [first.url] + [m.url for m in etcd3.members if m is not first]
        s = EtcdStore(endpoints, cluster_name, timeout=2, retry_for=15)
        assert s.transport.url(leader_index(s.transport)) == leader.url
    nowhere = EtcdStore([m.url for m in etcd3.members if m is not leader], cluster_name)
    assert leader_index(nowhere.transport) is None  # the leader is not among them: the current endpoint serves


def test_deleted_ruleset_is_reported(etcd3: EtcdCluster, store: EtcdStore) -> None:
    first = protocol.init(store, three_members(), "pg0", actor="t").snapshot.revision
    w = Watcher(store)
    try:
        w.until(first)
        etcd3.delete_raw(store.records.ruleset_key)
        view = w.views.get(timeout=10)
        assert view.ruleset is None and "deleted" in view.problem
    finally:
        w.close()


def test_watch_of_an_uninitialized_cluster_waits_for_init(store: EtcdStore) -> None:
    w = Watcher(store)
    try:
        time.sleep(0.3)
        assert w.views.empty()
        first = protocol.init(store, three_members(), "pg0", actor="t").snapshot.revision
        assert w.until(first) == [first]
        added = protocol.propose(store, core.AddMember(Member("pg3")), actor="t").snapshot.revision
        assert w.until(added) == [first, added]
    finally:
        w.close()
