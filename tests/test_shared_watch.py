"""The shared watch (pgcohort.store.hub) against a real etcd: one stream for many clusters, each
subscriber with RulesetWatch's promises (first view from a read, every change in order, never twice),
through member death, silence, compaction, a subscriber that stops consuming, and close()."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from pgcohort import protocol
from pgcohort.store import EtcdStore, Revision, Security
from pgcohort.store import hub as hub_module
from pgcohort.store.hub import HubWatch
from pgcohort.store.watch import RulesetWatch
from tests.conftest import make_store, three_members
from tests.servers import EtcdCluster
from tests.test_watch import Watcher, changes

pytestmark = pytest.mark.etcd


def family(etcd: EtcdCluster, prefix: str, n: int, **kw: float) -> list[EtcdStore]:
    """n stores of one process (a base store and n-1 made from it), clusters c0..c{n-1} under ``prefix``."""
    base = EtcdStore(etcd.endpoints, "c0", prefix=prefix, timeout=kw.get("timeout", 2.0),
                     retry_for=kw.get("retry_for", 15.0))  # fmt: skip
    return [base] + [base.for_cluster(f"c{i}") for i in range(1, n)]


def initialized(stores: list[EtcdStore]) -> list[Revision]:
    return [protocol.init(s, three_members(), "pg0", actor="t").snapshot.revision for s in stores]


def streaming(stores: list[EtcdStore], watchers: list[Watcher]) -> list[list[Revision]]:
    """One change per cluster, seen by its watcher: the hub's stream is up (first views come from reads)."""
    seen = []
    for s, w in zip(stores, watchers, strict=True):
        (rev,) = changes(s, 1)
        seen.append(list(w.until(rev)))
    return seen


def hub_of(store: EtcdStore) -> hub_module.WatchHub:
    return store._family.hub()


def streams(etcd: EtcdCluster) -> int:
    """Watch streams open on the members that answer (etcd's own count)."""
    import urllib.request

    total = 0
    for m in etcd.members:
        if m.proc is None or m.proc.poll() is not None:
            continue
        with urllib.request.urlopen(m.url + "/metrics", timeout=5) as r:  # noqa: S310 (loopback)
            for line in r.read().decode().splitlines():
                if line.startswith("etcd_debugging_mvcc_watch_stream_total "):
                    total += int(float(line.split()[1]))
    return total


def compact(url: str, revision: int) -> None:
    import json
    import urllib.request

    body = json.dumps({"revision": revision, "physical": True}).encode()
    req = urllib.request.Request(url + "/v3/kv/compaction", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 (loopback)
        r.read()


@pytest.fixture
def prefix(cluster_name: str) -> str:
    return "/" + cluster_name  # a prefix of the test's own: the hub watches all of it


def test_many_clusters_one_stream_every_change_in_order(etcd3: EtcdCluster, prefix: str) -> None:
    stores = family(etcd3, prefix, 12)
    firsts = initialized(stores)
    before = streams(etcd3)
    watchers = [Watcher(s) for s in stores for _ in range(2)]  # two sidecars of each cluster in this process
    try:
        assert all(isinstance(w.watch, HubWatch) for w in watchers)
        for i, w in enumerate(watchers):
            w.until(firsts[i // 2])
        assert streams(etcd3) - before == 1  # 24 watches, one stream
        expected: dict[int, list[Revision]] = {i: [firsts[i]] for i in range(len(stores))}
        for rnd in range(3):
            for i, s in enumerate(stores):
                if (i + rnd) % 3:
                    expected[i] += list(changes(s, 2))
        late = Watcher(stores[5])  # joins while the hub runs: starts from the current ruleset
        more = list(changes(stores[5], 2))
        assert late.until(more[-1]) == [expected[5][-1], *more]
        expected[5] += more
        late.close()
        for i, w in enumerate(watchers):
            assert w.until(expected[i // 2][-1]) == expected[i // 2], f"cluster c{i // 2}"
    finally:
        for w in watchers:
            w.close()
    assert hub_of(stores[0]).subscribers() == 0


def test_a_store_of_one_cluster_and_a_replay_have_streams_of_their_own(etcd3: EtcdCluster, prefix: str) -> None:
    alone = EtcdStore(etcd3.endpoints, "c0", prefix=prefix).watch()
    assert isinstance(alone, RulesetWatch)  # a sidecar: one cluster, its own key's stream
    alone.close()
    stores = family(etcd3, prefix, 2)
    first = initialized(stores)[1]
    missed = list(changes(stores[1], 2))
    w = Watcher(stores[1], since=first)
    try:
        assert isinstance(w.watch, RulesetWatch)  # since: etcd replays from there
        assert w.until(missed[-1]) == missed
    finally:
        w.close()


@pytest.mark.fault
def test_hub_survives_its_member_being_killed(etcd_private: EtcdCluster, prefix: str) -> None:
    stores = family(etcd_private, prefix, 4, timeout=1.0)
    firsts = initialized(stores)
    watchers = [Watcher(s) for s in stores]
    try:
        before = streaming(stores, watchers)
        assert [b[0] for b in before] == firsts
        serving = watchers[0].serving(etcd_private)  # the hub's stream: on the leader
        assert all(w.serving(etcd_private) is serving for w in watchers)
        etcd_private.kill(serving)
        others = [m.url for m in etcd_private.members if m is not serving]
        writer = EtcdStore(others, "c0", prefix=prefix, timeout=2, retry_for=15)
        revisions = {i: list(changes(writer.for_cluster(f"c{i}"), 2)) for i in range(4)}
        for i, w in enumerate(watchers):
            assert w.until(revisions[i][-1]) == [*before[i], *revisions[i]]
        assert watchers[0].serving(etcd_private) is not serving
        assert stores[0].stats().watch_resyncs >= 1
    finally:
        for w in watchers:
            w.close()


@pytest.mark.fault
def test_silent_member_then_compaction_every_subscriber_resyncs(etcd_private: EtcdCluster, prefix: str) -> None:
    """The hub's member pauses; meanwhile its clusters change and etcd compacts past the hub's place.
    The hub notices the silence, finds its revision compacted, reads every key again: a subscriber
    whose ruleset moved jumps to the current one, the others see nothing new; then changes flow again."""
    stores = family(etcd_private, prefix, 3, timeout=1.0)
    firsts = initialized(stores)
    watchers = [Watcher(s, silence=2.0) for s in stores]
    before = streaming(stores, watchers)
    assert [b[0] for b in before] == firsts
    paused = watchers[0].serving(etcd_private)
    others = [m.url for m in etcd_private.members if m is not paused]
    try:
        etcd_private.stop(paused)
        writer = EtcdStore(others, "c0", prefix=prefix, timeout=2, retry_for=15)
        moved = list(changes(writer.for_cluster("c1"), 3))
        compact(others[0], moved[-1])  # within the hub's 2 s of silence
        assert watchers[1].until(moved[-1], timeout=20) == [*before[1], moved[-1]]  # jumped
        more = {i: list(changes(writer.for_cluster(f"c{i}"), 1)) for i in range(3)}
        assert watchers[0].until(more[0][-1]) == [*before[0], *more[0]]  # nothing spurious
        assert watchers[1].until(more[1][-1]) == [*before[1], moved[-1], *more[1]]
        assert watchers[2].until(more[2][-1]) == [*before[2], *more[2]]
        assert stores[0].stats().watch_silences >= 1
    finally:
        etcd_private.cont(paused)
        for w in watchers:
            w.close()


def test_a_subscriber_that_stops_consuming_holds_nobody_up_and_misses_nothing(
    etcd3: EtcdCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "QUEUE_LIMIT", 3)
    stores = family(etcd3, prefix, 2)
    firsts = initialized(stores)
    slow_watch = stores[0].watch()
    slow = iter(slow_watch)
    assert next(slow).revision == firsts[0]  # then it stops consuming
    brisk = Watcher(stores[0])
    other = Watcher(stores[1])
    try:
        brisk.until(firsts[0])
        other.until(firsts[1])
        revisions = []
        for _ in range(8):  # each change waits for the brisk watcher: nobody is held up by the slow one
            revisions += list(changes(stores[0], 1))
            assert brisk.until(revisions[-1], timeout=5)[-1] == revisions[-1]
        assert hub_of(stores[0]).subscribers() == 2  # the slow one left the hub
        late = list(changes(stores[1], 1))
        assert other.until(late[-1]) == [firsts[1], *late]
        seen = [next(slow).revision for _ in revisions]  # on a stream of its own, from where it was
        assert seen == revisions
        assert brisk.seen == [firsts[0], *revisions]
    finally:
        slow_watch.close()
        brisk.close()
        other.close()


def test_close_stops_a_waiting_subscriber_and_the_last_one_stops_the_stream(etcd3: EtcdCluster, prefix: str) -> None:
    stores = family(etcd3, prefix, 3)
    firsts = initialized(stores)
    watchers = [Watcher(s) for s in stores]
    for w, f in zip(watchers, firsts, strict=True):
        w.until(f)
    hub = hub_of(stores[0])
    assert hub._thread is not None and hub._thread.is_alive()
    thread = hub._thread
    for w in watchers:
        w.close()  # each joins its thread: close() wakes a subscriber waiting for the next change
    thread.join(5)
    assert not thread.is_alive() and hub._thread is None
    again = Watcher(stores[2])  # an idle hub starts again for the next subscriber
    try:
        revs = list(changes(stores[2], 1))
        assert again.until(revs[-1]) == [firsts[2], *revs]
    finally:
        again.close()


def test_subscribers_of_an_uninitialized_cluster_wait_for_init(etcd3: EtcdCluster, prefix: str) -> None:
    stores = family(etcd3, prefix, 2)
    initialized(stores[:1])
    w = Watcher(stores[1])
    try:
        time.sleep(0.3)
        assert w.views.empty()
        (first,) = initialized(stores[1:])
        assert w.until(first) == [first]
    finally:
        w.close()


def test_many_subscribers_start_with_batched_reads(etcd3: EtcdCluster, prefix: str) -> None:
    """Subscribers that arrive while a read is under way are read together, up to BATCH keys a transaction."""
    stores = family(etcd3, prefix, 150)
    firsts = initialized(stores[:150:7])  # some initialized, most not
    views: dict[int, list[Revision]] = {}
    watches = [s.watch() for s in stores]
    hub = hub_of(stores[0])

    def follow(i: int) -> None:
        for view in watches[i]:
            views.setdefault(i, []).append(view.revision)

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(len(stores))]
    requests_before = stores[0].stats().requests
    with hub._read_lock:  # a read under way
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(hub._pending) < len(stores):
            assert time.monotonic() < deadline, f"{len(hub._pending)} subscribers pending"
            time.sleep(0.01)
    try:
        deadline = time.monotonic() + 15
        while len(views) < len(firsts):
            assert time.monotonic() < deadline, f"{len(views)} of {len(firsts)} first views"
            time.sleep(0.05)
        assert views == {i * 7: [f] for i, f in enumerate(firsts)}
        # 150 first reads in three read-only transactions (and the stream's own read)
        assert stores[0].stats().requests - requests_before <= -(-150 // hub_module.BATCH) + 1
    finally:
        for w in watches:
            w.close()
        for t in threads:
            t.join(5)


def test_node_records_of_a_family_share_one_lease(etcd3: EtcdCluster, prefix: str) -> None:
    from pgcohort.core.node import NodeRecord

    stores = family(etcd3, prefix, 3)
    regs = [s.registration("pg1", ttl=10) for s in stores] + [stores[0].registration("pg2", ttl=10)]
    before = stores[0].stats().requests
    for r in regs:
        r.publish(NodeRecord(r.name, "z1", "127.0.0.1", 5433, "replica"))
    assert len({r.lease for r in regs}) == 1
    assert stores[0].stats().requests - before == 1 + len(regs)  # one grant, one put each
    assert all("pg1" in s.nodes() for s in stores)
    other = EtcdStore(etcd3.endpoints, "c0", prefix=prefix)  # another process: a lease of its own
    reg = other.registration("pg3", ttl=10)
    reg.publish(NodeRecord("pg3", "z1", "127.0.0.1", 5434, "replica"))
    assert reg.lease != regs[0].lease
    for r in [*regs, reg]:
        r.withdraw()


@pytest.mark.fault
def test_a_refused_prefix_watch_gives_each_cluster_a_stream_of_its_own(etcd_private: EtcdCluster) -> None:
    """A role granted two clusters of the prefix, not the prefix: etcd cancels the hub's watch, and
    each watch goes on on its own key's stream."""
    ctl = ["etcdctl", "--endpoints", etcd_private.endpoints[0]]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    for args in (["user", "add", "root:rootpw"], ["user", "add", "tenant:tenantpw"], ["role", "add", "tenant"],
                 ["role", "grant-permission", "tenant", "--prefix=true", "readwrite", "/pgcohort/a/"],
                 ["role", "grant-permission", "tenant", "--prefix=true", "readwrite", "/pgcohort/b/"],
                 ["user", "grant-role", "tenant", "tenant"], ["auth", "enable"]):  # fmt: skip
        subprocess.run(ctl + args, env=env, check=True, capture_output=True)
    base = make_store(etcd_private, "a", security=Security(user="tenant", password="tenantpw"))
    stores = [base, base.for_cluster("b")]
    firsts = initialized(stores)
    watchers = [Watcher(s) for s in stores]
    try:
        for w, f in zip(watchers, firsts, strict=True):
            assert w.until(f) == [f]
        revs = [list(changes(s, 2)) for s in stores]
        for w, f, r in zip(watchers, firsts, revs, strict=True):
            assert w.until(r[-1]) == [f, *r]
        assert all(isinstance(w.watch, HubWatch) and w.watch._own is not None for w in watchers)
    finally:
        for w in watchers:
            w.close()
