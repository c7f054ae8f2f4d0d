"""The etcd store and the protocol against a real 3-member etcd cluster."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.core.node import NodeRecord
from pgcohort.core.rules import AnyK, Member
from pgcohort.core.term import Term
from pgcohort.errors import (
    AccessDeniedError,
    ConflictError,
    IndeterminateError,
    InvalidRecordError,
    NotInitializedError,
    RefusedError,
    StoreUnavailableError,
    SupersededError,
)
from pgcohort.store import EtcdStore, Revision, Security
from tests.conftest import make_store, three_members
from tests.servers import EtcdCluster

pytestmark = pytest.mark.etcd


def test_init_is_create_if_absent(store: EtcdStore) -> None:
    done = protocol.init(store, three_members(), "pg0", actor="a")
    snap, term = store.read_both()
    assert snap.revision == done.snapshot.revision
    assert snap.ruleset.version == 1 and snap.ruleset.phase == "stable"
    assert term.term.term == 1 and term.term.primary == "pg0"
    with pytest.raises(RefusedError, match="already initialized"):
        protocol.init(store, three_members(), "pg1", actor="b")
    assert store.read() == snap and store.read_both()[1] == term


def test_not_initialized_is_reported(store: EtcdStore) -> None:
    with pytest.raises(NotInitializedError, match="pgcohort init"):
        store.read()


def test_change_commits_joint_ruleset_and_history_in_one_txn(store: EtcdStore) -> None:
    protocol.init(store, three_members(), "pg0", actor="a")
    added = protocol.propose(store, core.AddMember(Member("pg3", zone="z1")), actor="a")
    assert added.snapshot.ruleset.phase == "joint"
    final = protocol.finalize(store, actor="a", expected=added.snapshot.revision)
    history = store.history()
    assert [rs.version for _, rs in history] == [1, 2, 3]
    # The history entry is written by the same transaction: same revision as the ruleset.
    assert history[1][0] == added.snapshot.revision and history[2][0] == final.snapshot.revision
    assert history[2][1] == store.read().ruleset


def test_two_concurrent_proposers_exactly_one_wins(store: EtcdStore) -> None:
    protocol.init(store, three_members(), "pg0", actor="a")
    base = store.read()
    proposals = [
        core.propose(
            base.ruleset, core.AddMember(Member(n)), "pg0", changed_by=n, now="", writer=protocol.new_writer(n)
        )
        for n in ("x", "y")
    ]
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def go(rs: core.Ruleset) -> None:
        barrier.wait()
        try:
            results[rs.changed_by] = store.commit(base.revision, rs)
        except ConflictError as e:
            results[rs.changed_by] = e

    threads = [threading.Thread(target=go, args=(rs,)) for rs in proposals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [k for k, v in results.items() if not isinstance(v, ConflictError)]
    assert len(winners) == 1
    loser = next(k for k in results if k not in winners)
    assert isinstance(results[loser], ConflictError)
    assert store.read().ruleset.changed_by == winners[0]
    # The loser, going through the protocol, re-reads, re-validates and reports why not.
    with pytest.raises(RefusedError, match="already in progress"):
        protocol.propose(store, core.AddMember(Member(loser)), actor=loser)


def test_conflicting_proposer_retries_validly(store: EtcdStore) -> None:
    """A conflict is retried on the re-read ruleset when the change is still valid."""
    protocol.init(store, three_members(), "pg0", actor="a")
    base = store.read()
    sneaky = core.propose(base.ruleset, core.SetPolicy(AnyK(2)), "pg0", changed_by="b", now="", writer="b/1")
    store.commit(base.revision, sneaky)
    protocol.finalize(store, actor="b")
    # Now commit with the stale base revision through the store: conflict.
    stale = core.propose(base.ruleset, core.AddMember(Member("pg3")), "pg0", changed_by="a", now="", writer="a/1")
    with pytest.raises(ConflictError) as info:
        store.commit(base.revision, stale)
    assert info.value.current_revision is not None and info.value.current_revision > base.revision
    done = protocol.propose(store, core.AddMember(Member("pg3")), actor="a")
    assert done.snapshot.ruleset.rule.acks() == 2  # built on the re-read ruleset, not the stale one


@pytest.mark.slow
def test_no_lost_update_over_1000_racing_proposals(etcd3: EtcdCluster, store: EtcdStore, cluster_name: str) -> None:
    """Four racing proposers, 1,000 CAS attempts on shared revisions: every success is in
    the history exactly once, the history is one unbroken chain, nothing else was written."""
    protocol.init(store, three_members(), "pg0", actor="init")
    attempts_left = [1000]
    lock = threading.Lock()
    won: list[tuple[Revision, Revision, str]] = []  # (expected, new revision, writer)
    conflicts = [0]

    def racer(name: str, seed: int) -> None:
        rnd = random.Random(seed)
        s = make_store(etcd3, cluster_name)  # each proposer has its own client, as separate hosts would
        while True:
            with lock:
                if attempts_left[0] == 0:
                    return
                attempts_left[0] -= 1
            snap = s.read()
            rs = snap.ruleset
            writer = protocol.new_writer(name)
            if rs.phase == "joint":
                nxt = core.finalize(rs, changed_by=name, now="", writer=writer)
            else:
                extra = Member("pg3")
                change: core.Change
                options: list[core.Change] = [core.SetPolicy(AnyK(3 - rs.rule.acks()))]
                if rs.rule.member("pg3") is None:
                    options.append(core.AddMember(extra))
                else:
                    options.append(core.RemoveMember("pg3"))
                change = rnd.choice(options)
                nxt = core.propose(rs, change, "pg0", changed_by=name, now="", writer=writer)
            try:
                rev = s.commit(snap.revision, nxt)
                with lock:
                    won.append((snap.revision, rev, writer))
            except ConflictError:
                with lock:
                    conflicts[0] += 1

    threads = [threading.Thread(target=racer, args=(f"p{i}", i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) + conflicts[0] == 1000
    assert conflicts[0] > 0, "the proposers never raced"
    history = store.history()
    assert [rs.version for _, rs in history] == list(range(1, len(won) + 2))
    by_writer = {rs.writer: rev for rev, rs in history}
    for _, rev, writer in won:
        assert by_writer[writer] == rev, f"committed write {writer} at {rev} is missing from history"
    # One chain: each success was based on the revision the previous success produced.
    chain = sorted(won, key=lambda w: w[1])
    revisions = [history[0][0]] + [w[1] for w in chain]
    assert [w[0] for w in chain] == revisions[:-1]
    for (_, older), (_, newer) in zip(history, history[1:], strict=False):
        if newer.previous is not None:
            assert newer.previous == older.rule
        else:
            assert newer.rule == older.rule  # finalize keeps the rule
    print(f"\n1000 racing proposals: {len(won)} committed, {conflicts[0]} conflicts, 0 lost")


@pytest.mark.parametrize(
    "planted, problem",
    [
        (b"{not json", "not a valid pgcohort ruleset"),
        (b'"a string"', "must be a JSON object"),
        (json.dumps({"version": "2", "phase": "stable", "rule": {}}).encode(), "wrong type"),
        (
            json.dumps(
                {
                    "version": 2,
                    "phase": "stable",
                    "previous": None,
                    "rule": {
                        "policy": {"kind": "any", "k": 1},
                        "cohort": [{"name": "bad name", "host": "h", "port": 1, "zone": "z"}],
                    },
                }
            ).encode(),
            "invalid member name",
        ),
        (
            json.dumps(
                {
                    "version": 2,
                    "phase": "joint",
                    "previous": None,
                    "rule": {
                        "policy": {"kind": "any", "k": 1},
                        "cohort": [{"name": "a", "host": "h", "port": 1, "zone": "z"}],
                    },
                }
            ).encode(),
            "contradicts previous",
        ),
    ],
)
def test_malformed_ruleset_is_reported_and_changes_nothing(
    etcd3: EtcdCluster, store: EtcdStore, planted: bytes, problem: str
) -> None:
    protocol.init(store, three_members(), "pg0", actor="a")
    etcd3.put_raw(store.records.ruleset_key, planted)
    before = len(store.history())
    with pytest.raises(InvalidRecordError, match=problem) as info:
        store.read()
    assert "Nothing was changed" in str(info.value)
    with pytest.raises(InvalidRecordError):
        protocol.propose(store, core.AddMember(Member("pg3")), actor="a")
    assert len(store.history()) == before
    views = store.watch()
    try:
        view = next(iter(views))
    finally:
        views.close()
    assert view.ruleset is None and problem.split()[0] in view.problem


def test_ambiguous_write_is_recognised_by_writer_id(store: EtcdStore) -> None:
    """Retrying the same CAS after its first attempt committed returns success, not a conflict."""
    protocol.init(store, three_members(), "pg0", actor="a")
    snap = store.read()
    rs = core.propose(snap.ruleset, core.AddMember(Member("pg3")), "pg0", changed_by="a", now="", writer="a/retry")
    rev = store.commit(snap.revision, rs)
    assert store.commit(snap.revision, rs) == rev  # the "retry" recognises its own write
    other = core.propose(snap.ruleset, core.AddMember(Member("pg4")), "pg0", changed_by="b", now="", writer="b/1")
    with pytest.raises(ConflictError):
        store.commit(snap.revision, other)


def test_unreachable_endpoints_rotate(etcd3: EtcdCluster, cluster_name: str) -> None:
    dead = "http://127.0.0.1:1"  # nothing listens there: connection refused
    s = EtcdStore([dead, *etcd3.endpoints], cluster_name, timeout=2, retry_for=5)
    protocol.init(s, three_members(), "pg0", actor="a")
    assert s.read().ruleset.version == 1
    assert s.stats().rotations >= 1


def test_no_endpoint_answers(cluster_name: str) -> None:
    s = EtcdStore(["http://127.0.0.1:1", "http://127.0.0.1:2"], cluster_name, timeout=0.5, retry_for=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="no etcd endpoint answered"):
        s.read()
    # retry_for counts from the first attempt (sent outside tenacity), and it is used up
    assert 1.0 <= time.monotonic() - started < 2.5
    assert s.stats().rotations >= 3
    with pytest.raises(StoreUnavailableError, match="not sent, nothing was changed"):
        s.init(core.initial(three_members(), "pg0", changed_by="", now="", writer="w"), Term(1, "pg0", 0, writer="w"))


@pytest.mark.fault
def test_write_during_quorum_loss_is_indeterminate_then_resolved(etcd_private: EtcdCluster, cluster_name: str) -> None:
    """Quorum lost: a CAS times out as indeterminate; after quorum returns, retrying the same
    CAS tells whether it committed (by its writer id) instead of guessing."""
    s = make_store(etcd_private, cluster_name, timeout=1.0, retry_for=3.0)
    protocol.init(s, three_members(), "pg0", actor="a")
    snap = s.read()
    rs = core.propose(snap.ruleset, core.AddMember(Member("pg3")), "pg0", changed_by="a", now="", writer="a/quorum")
    for m in etcd_private.members[1:]:
        etcd_private.stop(m)
    try:
        with pytest.raises(IndeterminateError, match="may still commit"):
            s.commit(snap.revision, rs)
    finally:
        for m in etcd_private.members[1:]:
            etcd_private.cont(m)
    etcd_private.wait_healthy()
    s2 = make_store(etcd_private, cluster_name)
    rev = s2.commit(snap.revision, rs)  # committed now, or recognised as committed earlier
    assert s2.read().revision == rev and s2.read().ruleset.writer == "a/quorum"


def test_leased_node_record_expires_and_comes_back(store: EtcdStore) -> None:
    reg = store.registration("pg1", ttl=2)
    reg.publish(NodeRecord("pg1", "z1", "127.0.0.1", 5433, "replica", seen_revision=5))
    assert store.nodes()["pg1"].role == "replica"
    deadline = time.monotonic() + 15
    while "pg1" in store.nodes():  # nobody refreshes: the lease expires
        assert time.monotonic() < deadline, "leased record outlived its TTL by 13s"
        time.sleep(0.2)
    reg.publish(NodeRecord("pg1", "z1", "127.0.0.1", 5433, "replica", seen_revision=6))  # a new lease is granted
    assert store.nodes()["pg1"].seen_revision == 6
    reg.withdraw()
    assert "pg1" not in store.nodes()


def test_term_cas_compares_ruleset_and_term(store: EtcdStore) -> None:
    protocol.init(store, three_members(), "pg0", actor="a")
    snap, term = store.read_both()
    nxt = term.term.next("pg1", snap.revision, writer="t/1")
    store.put_term(snap.revision, term, nxt)
    assert store.read_both()[1].term.primary == "pg1"
    stale = term.term.next("pg2", snap.revision, writer="t/2")
    with pytest.raises(ConflictError, match="survey again"):
        store.put_term(snap.revision, term, stale)
    assert store.read_both()[1].term.primary == "pg1"


@pytest.mark.fault
def test_token_auth(etcd_private: EtcdCluster, cluster_name: str) -> None:
    """With etcd auth enabled, user/password get a token that every request and the watch send."""
    import subprocess

    ctl = ["etcdctl", "--endpoints", etcd_private.endpoints[0]]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    for args in (["user", "add", "root:rootpw"], ["auth", "enable"]):
        subprocess.run(ctl + args, env=env, check=True, capture_output=True)
    s = make_store(etcd_private, cluster_name, security=Security(user="root", password="rootpw"))
    first = protocol.init(s, three_members(), "pg0", actor="a").snapshot.revision
    views = s.watch()
    try:
        assert next(iter(views)).revision == first
    finally:
        views.close()
    anonymous = make_store(etcd_private, cluster_name, retry_for=1)
    with pytest.raises(AccessDeniedError, match="user name is empty|permission denied|invalid auth token"):
        anonymous.read()
    with pytest.raises(AccessDeniedError, match="authentication failed"):
        make_store(etcd_private, cluster_name, security=Security(user="root", password="wrong"))


def test_a_retried_write_that_committed_and_was_superseded_says_so(store: EtcdStore) -> None:
    """The first attempt committed but its answer was lost; by the time the same CAS is
    retried, someone else moved on. It must be reported as committed, not as a conflict."""
    protocol.init(store, three_members(), "pg0", actor="a")
    snap, term = store.read_both()
    added = core.propose(snap.ruleset, core.AddMember(Member("pg3")), "pg0", changed_by="a", now="", writer="a/1")
    first = store.commit(snap.revision, added, term_revision=term.revision)  # the answer "lost"
    protocol.finalize(store, actor="sidecar")
    with pytest.raises(
        SupersededError, match=r"version 2 \(add pg3\) was committed at revision \d+, then superseded by version 3"
    ) as e:
        store.commit(snap.revision, added, term_revision=term.revision)  # the retry of the same CAS
    assert e.value.committed_revision == first
    snap, term = store.read_both()
    t2 = term.term.next("pg1", snap.revision, writer="g/1")
    store.put_term(snap.revision, term, t2)
    store.put_term(snap.revision, store.read_both()[1], t2.next("pg2", snap.revision, writer="g/2"))
    with pytest.raises(
        SupersededError, match="term 2 naming pg1 was committed at revision .*, then superseded by term 3"
    ):
        store.put_term(snap.revision, term, t2)


def test_a_stranger_conflict_is_not_mistaken_for_ours(store: EtcdStore) -> None:
    protocol.init(store, three_members(), "pg0", actor="a")
    snap, term = store.read_both()
    ours = core.propose(snap.ruleset, core.AddMember(Member("pg3")), "pg0", changed_by="a", now="", writer="a/1")
    theirs = core.propose(snap.ruleset, core.AddMember(Member("pg4")), "pg0", changed_by="b", now="", writer="b/1")
    store.commit(snap.revision, theirs, term_revision=term.revision)
    with pytest.raises(ConflictError) as e:
        store.commit(snap.revision, ours, term_revision=term.revision)
    assert not isinstance(e.value, SupersededError)
