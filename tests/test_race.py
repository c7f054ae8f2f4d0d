"""The race from the seed, reproduced with real PostgreSQL 15, naive and gated, side by side.

Seed (000_f6c26ac6311c1e15): one orchestrator admits a new replica, a write is acknowledged
with that replica's participation, the primary crashes, and another orchestrator with a
stale view fails over without recognising the replica. The naive run must lose the write
(so this file proves it can see a loss); the gated run must keep it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from pgcohort import gate, protocol
from pgcohort.adapters.postgres import PostgresNode
from pgcohort.core import ruleset as core
from pgcohort.errors import ConflictError, RefusedError
from pgcohort.seams import Snapshot, TermSnapshot
from tests.conftest import need_servers
from tests.race import StaleOnce, acked_write, connect, create_ledger, ledger_ids, naive_failover
from tests.stack import Stack

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]

W = 424242  # the acknowledged write everything hinges on


@pytest.fixture
def stack() -> Iterator[Stack]:
    need_servers()
    st = Stack()
    yield st
    st.close()


def primaries(st: Stack) -> list[str]:
    out = []
    for name, node in st.pg.nodes.items():
        if not node.running:
            continue
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row and not row[0]:
                out.append(name)
    return out


def revoke(st: Stack, *names: str) -> None:
    """A network hiccup: these standbys stop receiving (and acknowledging) WAL."""
    for n in names:
        node = PostgresNode(st.pg.nodes[n].dsn)
        node.revoke()
        node.close()


def seed_scenario(st: Stack) -> tuple[core.Ruleset, tuple[Snapshot, TermSnapshot]]:
    """Up to the crash: returns the stale view orchestrator B read before the admission."""
    st.start(standbys=2)  # pg0 primary; pg1, pg2 standbys; any 1 of (pg0 pg1 pg2)
    st.wait("the initial setting", lambda: st.primary_setting() == "ANY 1 (pg1, pg2)")
    create_ledger(st.pg.nodes["pg0"].dsn)
    stale = st.store().read_both()  # orchestrator B reads its view ... and pauses
    st.pg.add_standby("pg3", "pg0")  # scaling 3 -> 4: a new replica
    st.start_sidecar("pg3")
    protocol.propose(st.store(), core.AddMember(st.member("pg3")), actor="orchestrator-A")  # A admits it
    st.wait("the admission finalized", lambda: st.store().read().ruleset.phase == "stable")
    assert st.primary_setting() == "ANY 1 (pg1, pg2, pg3)"
    revoke(st, "pg1", "pg2")  # only the new replica is acknowledging now
    assert acked_write(st.pg.nodes["pg0"].dsn, W), "the write was not acknowledged"
    st.sidecars["pg0"].kill()
    st.pg.crash(st.pg.nodes["pg0"])  # the primary crashes
    return stale[0].ruleset, stale


def test_seed_race_naive_loses_the_acknowledged_write(stack: Stack) -> None:
    stale_view, _ = seed_scenario(stack)
    promoted = naive_failover(stale_view, "pg0")  # B fails over with its stale view
    assert promoted in ("pg1", "pg2")
    assert W not in ledger_ids(stack.pg.nodes[promoted].dsn), "the naive orchestrator did not lose the write"


def test_seed_race_gated_keeps_the_acknowledged_write(stack: Stack) -> None:
    st = stack
    _, stale = seed_scenario(st)
    outcome = gate.failover(StaleOnce(st.store(), stale), connect, actor="orchestrator-B", writer="B/1")
    assert outcome.attempts == 2, "the stale view was not caught by the compare"
    assert outcome.candidate == "pg3"
    assert W in ledger_ids(st.pg.nodes["pg3"].dsn)
    assert primaries(st) == ["pg3"]
    term = st.store().read_both()[1].term
    assert (term.term, term.primary, term.forced) == (2, "pg3", "")
    # The old primary comes back still a primary (nothing rewound it): its sidecar is fenced.
    st.pg.start(st.pg.nodes["pg0"])
    car = st.start_sidecar("pg0")
    st.wait("pg0's sidecar to report itself fenced", lambda: car.get("/health")[1].get("fenced"))
    code, body = car.get("/health")
    assert code == 503 and any("term names pg3" in p for p in body["problems"])
    assert "pgcohort_fenced 1.0" in car.get("/metrics")[1]


def removal_scenario(st: Stack) -> None:
    """A removal of pg3 is proposed while the only acknowledging standby is pg3; the primary crashes."""
    st.start(standbys=3)  # any 1 of (pg0 pg1 pg2 pg3)
    st.wait("the initial setting", lambda: st.primary_setting() == "ANY 1 (pg1, pg2, pg3)")
    create_ledger(st.pg.nodes["pg0"].dsn)
    revoke(st, "pg1", "pg2")
    assert acked_write(st.pg.nodes["pg0"].dsn, W)  # acknowledged by pg3 under the current rule
    protocol.propose(st.store(), core.RemoveMember("pg3"), actor="orchestrator-A")
    st.wait("the narrowed setting", lambda: st.primary_setting() == "ANY 1 (pg1, pg2)")
    assert st.store().read().ruleset.phase == "joint"  # the barrier cannot be acknowledged: no finalize
    st.sidecars["pg0"].kill()
    st.pg.crash(st.pg.nodes["pg0"])


def test_removal_race_naive_loses_the_acknowledged_write(stack: Stack) -> None:
    removal_scenario(stack)
    view = stack.store().read().ruleset  # B sees the removal and trusts the new rule alone
    promoted = naive_failover(view, "pg0")
    assert promoted in ("pg1", "pg2")
    assert W not in ledger_ids(stack.pg.nodes[promoted].dsn), "the naive orchestrator did not lose the write"


def test_removal_race_gated_refuses_and_the_write_survives(stack: Stack) -> None:
    st = stack
    removal_scenario(st)
    before = st.store().read_both()[1]
    with pytest.raises(RefusedError) as info:
        gate.failover(st.store(), connect, actor="orchestrator-B", writer="B/1")
    text = str(info.value)
    assert "pg3" in text and "not in every active cohort" in text and "No term was written" in text
    assert st.store().read_both()[1] == before  # no term, no promotion
    assert primaries(st) == []
    assert W in ledger_ids(st.pg.nodes["pg3"].dsn)  # the write survives where it was acknowledged


def test_removal_race_with_the_leaving_member_down_is_refused_under_the_old_rule(stack: Stack) -> None:
    """As above, and pg3 (the only holder of W) is down too. The new rule alone, any 1 of
    (pg0 pg1 pg2), is satisfied by surveying pg1 and pg2, and promoting either loses W; the
    old rule, still active in the joint phase, needs 3 of its 3 standbys: refuse."""
    st = stack
    removal_scenario(st)
    st.pg.crash(st.pg.nodes["pg3"])
    before = st.store().read_both()[1]
    with pytest.raises(
        RefusedError, match=r"any 1 of \(pg0 pg1 pg2 pg3\)' needs 3 of its 3 standbys surveyed, reached 2"
    ):
        gate.failover(st.store(), connect, actor="orchestrator-B", writer="B/1")
    assert st.store().read_both()[1] == before  # no term, no promotion
    assert primaries(st) == []


def test_two_orchestrators_at_once_exactly_one_promotes(stack: Stack) -> None:
    st = stack
    st.start(standbys=3)
    st.wait("the initial setting", lambda: st.primary_setting() == "ANY 1 (pg1, pg2, pg3)")
    create_ledger(st.pg.nodes["pg0"].dsn)
    assert acked_write(st.pg.nodes["pg0"].dsn, W)
    st.sidecars["pg0"].kill()
    st.pg.crash(st.pg.nodes["pg0"])
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def orchestrator(name: str, candidate: str) -> None:
        start.wait()
        try:
            results[name] = gate.failover(st.store(), connect, actor=name, writer=f"{name}/1", candidate=candidate)
        except (ConflictError, RefusedError) as e:
            results[name] = e

    threads = [threading.Thread(target=orchestrator, args=(f"orch-{c}", c)) for c in ("pg1", "pg2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [r for r in results.values() if isinstance(r, gate.Outcome)]
    losers = [r for r in results.values() if not isinstance(r, gate.Outcome)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], (ConflictError, RefusedError))
    print(f"\nthe losing orchestrator: {type(losers[0]).__name__}: {losers[0]}")
    assert primaries(st) == [winners[0].candidate]  # exactly one promotion
    assert st.store().read_both()[1].term.term == 2
    assert W in ledger_ids(st.pg.nodes[winners[0].candidate].dsn)
