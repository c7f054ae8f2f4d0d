"""The PostgreSQL adapter against a real PostgreSQL 15 primary with streaming standbys."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from adapters.postgres import Desired, PostgresNode
from plugin.errors import BarrierPendingError, PostgresUnreachableError
from tests.conftest import need
from tests.pg import PG_BIN, PgCluster

pytestmark = pytest.mark.pg


@pytest.fixture
def pg() -> Iterator[PgCluster]:
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    cluster = PgCluster()
    cluster.init_primary("pg0")
    cluster.add_standby("pg1", "pg0")
    cluster.add_standby("pg2", "pg0")
    yield cluster
    cluster.close()


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


def desired(rev: int, *names: str) -> Desired:
    return Desired(rev, f"ANY 1 ({', '.join(names)})", frozenset(names))


def test_observe_roles_and_positions(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    primary = connect("pg0").observe()
    assert primary.primary and primary.lsn > 0 and primary.setting == ""
    assert sorted(r.name for r in primary.replication) == ["pg1", "pg2"]
    standby = connect("pg1").observe()
    assert not standby.primary and standby.receiving and standby.lsn > 0


def test_apply_is_in_force_when_it_returns(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    node = connect("pg0")
    node.apply(lambda: desired(5, "pg1", "pg2"))
    assert node.setting_shown_by_new_session() == "ANY 1 (pg1, pg2)"
    states = {r.name: (r.sync_state, r.sync_priority) for r in node.observe().replication}
    assert states == {"pg1": ("quorum", 1), "pg2": ("quorum", 1)}
    node.apply(lambda: desired(6, "pg2"))  # narrowing: pg1 stops counting
    states = {r.name: r.sync_state for r in node.observe().replication}
    assert node.setting_shown_by_new_session() == "ANY 1 (pg2)" and states == {"pg1": "async", "pg2": "quorum"}


def test_barrier_waits_for_a_standby_ack(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    node = connect("pg0")
    node.apply(lambda: desired(1, "pg1", "pg2"))
    assert node.barrier("t:1", timeout=5) > 0
    pg.crash(pg.nodes["pg1"])
    pg.crash(pg.nodes["pg2"])
    with pytest.raises(BarrierPendingError, match="keeps waiting"):
        node.barrier("t:2", timeout=1)
    with pytest.raises(BarrierPendingError, match="t:2"):  # the same barrier is reused, not duplicated
        node.barrier("t:3", timeout=0.5)
    pg.start(pg.nodes["pg1"])
    assert node.barrier("t:4", timeout=20) > 0  # the pending one is acknowledged once a standby is back


def test_revoke_stops_receiving_and_reports_position(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    primary = connect("pg0")
    with psycopg.connect(pg.nodes["pg0"].dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    standby = connect("pg1")
    position = standby.revoke()
    assert position > 0 and not standby.observe().receiving
    with psycopg.connect(pg.nodes["pg0"].dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    assert primary.observe().lsn > position
    assert standby.observe().lsn == position  # nothing more arrives after revoke
    standby.promote()
    assert standby.observe().primary


def test_unreachable_server_is_one_error(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    pg.crash(pg.nodes["pg2"])
    with pytest.raises(PostgresUnreachableError, match=r"127.0.0.1:\d+\) failed to read its state"):
        connect("pg2", connect_timeout=1).observe()


def test_two_writers_never_regress_the_setting(pg: PgCluster, connect: Callable[..., PostgresNode]) -> None:
    """Writer A decides on revision 1 and stalls before writing; writer B applies revision 2.

    Naive (write what you decided): A's late write regresses the primary to revision 1.
    Gated (the adapter's apply: render from a read made inside the advisory lock): A writes
    what is committed when it gets the lock, so the setting stays at revision 2.
    """
    committed = {"rev": 1}
    settings = {1: desired(1, "pg1"), 2: desired(2, "pg1", "pg2")}

    def read_committed() -> Desired:
        return settings[committed["rev"]]

    def naive_apply(d: Desired) -> None:
        with psycopg.connect(pg.nodes["pg0"].dsn, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                    psycopg.sql.Literal(d.setting)
                )
            )
            conn.execute("SELECT pg_reload_conf()")

    a, b = connect("pg0"), connect("pg0")
    for gated in (False, True):
        committed["rev"] = 1
        b.apply(read_committed)
        decided = read_committed()  # A decides on revision 1 ...
        committed["rev"] = 2  # ... the ruleset moves on, B applies it ...
        b.apply(read_committed)
        # ... and A resumes.
        if gated:
            a.apply(read_committed)
        else:
            naive_apply(decided)
            b.wait_in_force(decided, timeout=5)
        shown = b.setting_shown_by_new_session()
        if gated:
            assert shown == settings[2].setting, "the gated writer regressed the setting"
        else:
            assert shown == settings[1].setting, (
                "the naive writer did not regress: this test would not see a regression"
            )
