"""The PostgreSQL adapter against a real PostgreSQL 15 primary with streaming standbys."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from pgcohort.adapters.postgres import PostgresNode
from pgcohort.core.rules import Member
from pgcohort.core.steps import Desired
from pgcohort.errors import BarrierPendingError, NotStandbyError, PostgresUnreachableError
from tests.pg import PgCluster

pytestmark = pytest.mark.pg


@pytest.fixture
def connect(pg: PgCluster) -> Iterator[Callable[[str], PostgresNode]]:
    """Adapters to named nodes, closed after the test."""
    opened: list[PostgresNode] = []

    def make(name: str, **kw: float) -> PostgresNode:
        opened.append(PostgresNode(pg.nodes[name].dsn, **kw))
        return opened[-1]

    yield make
    for node in opened:
        node.close()


def desired(rev: int, *names: str, acks: int = 1) -> Desired:
    return Desired(rev, f"ANY {acks} ({', '.join(names)})", frozenset(names), acks)


def apply(node: PostgresNode, target: Desired) -> None:
    with node.setting_lock() as writer:
        writer.write(target)
    node.wait_in_force(target, timeout=5)


def test_observe_roles_and_positions(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    primary = connect("pg0").observe()
    assert primary.primary and primary.lsn > 0 and primary.setting == ""
    assert sorted(r.name for r in primary.replication) == ["pg1", "pg2"]
    standby = connect("pg1").observe()
    assert not standby.primary and standby.receiving and standby.lsn > 0


def test_apply_is_in_force_when_it_returns(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    node = connect("pg0")
    apply(node, desired(5, "pg1", "pg2"))
    assert node.setting_shown_by_new_session() == "ANY 1 (pg1, pg2)"
    states = {r.name: (r.sync_state, r.sync_priority) for r in node.observe().replication}
    assert states == {"pg1": ("quorum", 1), "pg2": ("quorum", 1)}
    apply(node, desired(6, "pg2"))  # narrowing: pg1 stops counting
    sync_states = {r.name: r.sync_state for r in node.observe().replication}
    assert node.setting_shown_by_new_session() == "ANY 1 (pg2)" and sync_states == {"pg1": "async", "pg2": "quorum"}


def test_barrier_waits_for_a_standby_ack(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    node = connect("pg0")
    apply(node, desired(1, "pg1", "pg2"))
    assert node.barrier(1, timeout=5) > 0
    pg.crash(pg.nodes["pg1"])
    pg.crash(pg.nodes["pg2"])
    with pytest.raises(BarrierPendingError, match="revision 2 .*keeps waiting"):
        node.barrier(2, timeout=1)
    with pytest.raises(BarrierPendingError, match="revision 2"):  # the same revision waits for the same commit
        node.barrier(2, timeout=0.5)
    pg.start(pg.nodes["pg1"])
    lsn = node.barrier(2, timeout=20)  # the pending one is acknowledged once a standby is back
    assert "pg1" in node.acknowledged(lsn)


def test_a_barrier_is_never_reused_across_revisions(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    """A barrier for revision 10 times out and completes later, uncollected; revision 12's
    barrier must be a new commit made after revision 12 was written, not the old one."""
    node = connect("pg0")
    apply(node, desired(10, "pg1", "pg2"))
    pg.crash(pg.nodes["pg1"])
    pg.crash(pg.nodes["pg2"])
    with pytest.raises(BarrierPendingError):
        node.barrier(10, timeout=1)
    pg.start(pg.nodes["pg1"])
    pg.start(pg.nodes["pg2"])
    head = node.observe().lsn
    deadline = time.monotonic() + 30
    while set(node.acknowledged(head)) != {"pg1", "pg2"}:  # revision 10's barrier is now released
        assert time.monotonic() < deadline, "the standbys did not catch up"
        time.sleep(0.05)
    apply(node, desired(12, "pg1"))
    before = node.observe().lsn
    assert node.barrier(12, timeout=10) > before, "revision 12 got a barrier committed before its own apply"
    # A new write for the same revision (the primary moved away and back) needs its own barrier too.
    apply(node, desired(12, "pg1"))
    before = node.observe().lsn
    assert node.barrier(12, timeout=10) > before


def test_acknowledged_names_the_standbys_that_flushed(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    node = connect("pg0")
    apply(node, desired(1, "pg1", "pg2"))
    connect("pg2").revoke()
    lsn = node.barrier(1, timeout=5)  # released by pg1 alone: ANY 1
    assert set(node.acknowledged(lsn)) == {"pg1"}
    assert node.acknowledged(lsn)["pg1"] >= lsn


def test_revoke_stops_receiving_and_reports_position(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    primary = connect("pg0")
    with psycopg.connect(pg.nodes["pg0"].dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    standby = connect("pg1")
    position = standby.revoke().lsn
    assert position > 0 and not standby.observe().receiving
    with psycopg.connect(pg.nodes["pg0"].dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    assert primary.observe().lsn > position
    assert standby.observe().lsn == position  # nothing more arrives after revoke
    standby.promote()
    assert standby.observe().primary


def test_follow_undoes_a_revoke_in_the_same_session(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    """What a fault schedule does (cut, then reconnect) and what the gate's repoint does after a promotion."""
    standby = connect("pg1")
    standby.revoke()
    assert not standby.observe().receiving
    standby.follow(Member("pg0", "127.0.0.1", pg.nodes["pg0"].port, "z"))
    deadline = time.monotonic() + 20
    while not standby.observe().receiving:
        assert time.monotonic() < deadline, "pg1 did not stream again"
        time.sleep(0.1)
    with psycopg.connect(pg.nodes["pg1"].dsn, autocommit=True) as conn:
        kept = conn.execute("SELECT current_setting('pgcohort.primary_conninfo', true)").fetchone()
        conninfo = conn.execute("SHOW primary_conninfo").fetchone()
    assert kept is not None and not kept[0], "the kept conninfo was not removed"
    assert conninfo is not None and "application_name=pg1" in conninfo[0], conninfo


def test_revoke_refuses_a_primary(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    with pytest.raises(NotStandbyError, match="not in recovery") as caught:
        connect("pg0").revoke()
    assert caught.value.position > 0
    assert connect("pg1").observe().receiving  # nothing was changed


def test_unreachable_server_is_one_error(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    pg.crash(pg.nodes["pg2"])
    with pytest.raises(PostgresUnreachableError, match=r"127.0.0.1:\d+\) failed to read its state"):
        connect("pg2", connect_timeout=1).observe()
