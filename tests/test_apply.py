"""The sidecar's apply and barrier steps, in-process, against a real etcd and real PostgreSQL 15.

The sidecar is the real :class:`pgcohort.sidecar.loop.Sidecar`; the store is the real
:class:`EtcdStore` and the node the real :class:`PostgresNode`, each wrapped only where the
test needs to hold a step at a chosen point (the wrappers implement the same Protocols).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pgcohort import gate, protocol
from pgcohort.adapters.postgres import PostgresNode, connector
from pgcohort.core import ruleset as core
from pgcohort.core.rules import AnyK, Member, Rule
from pgcohort.core.steps import Desired
from pgcohort.errors import RefusedError
from pgcohort.metrics import Metrics
from pgcohort.seams import Node, SettingWriter, Snapshot, Store, TermSnapshot
from pgcohort.sidecar.loop import Sidecar
from pgcohort.sidecar.state import Settings
from tests.conftest import make_store
from tests.fakes import DelegatingNode, DelegatingStore
from tests.pg import PgCluster
from tests.servers import EtcdCluster

pytestmark = [pytest.mark.pg, pytest.mark.etcd]


def members(pg: PgCluster) -> Rule:
    return Rule(AnyK(1), tuple(Member(n, "127.0.0.1", pg.nodes[n].port, "z") for n in ("pg0", "pg1", "pg2")))


def shown(pg: PgCluster) -> str:
    with psycopg.connect(pg.nodes["pg0"].dsn, autocommit=True) as conn:
        row = conn.execute("SHOW synchronous_standby_names").fetchone()
        return str(row[0]) if row else ""


class HeldStore(DelegatingStore):
    """The real store, except that ``read_both`` can hold its caller right after reading."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.armed = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        both = self.store.read_both()
        if self.armed.is_set():
            self.armed.clear()
            self.holding.set()
            self.release.wait(30)
        return both


class WriteLog(DelegatingNode):
    """The real node; every setting written through its lock is appended, in the order written, to ``log``."""

    def __init__(self, node: Node, log: list[int]) -> None:
        super().__init__(node)
        self.log = log

    @contextlib.contextmanager
    def setting_lock(self) -> Iterator[SettingWriter]:
        with self.node.setting_lock() as writer:
            yield _Logged(writer, self.log)


class _Logged:
    def __init__(self, writer: SettingWriter, log: list[int]) -> None:
        self.writer, self.log = writer, log

    def write(self, desired: Desired) -> None:
        self.writer.write(desired)
        self.log.append(desired.revision)


class StaleWalSenders(DelegatingNode):
    """The real node, except that before each barrier the setting in effect is the *old*,
    weaker one: what WAL senders that have not processed the reload yet still enforce."""

    def __init__(self, node: Node, dsn: str, old: str) -> None:
        super().__init__(node)
        self.dsn, self.old = dsn, old

    def barrier(self, revision: int, *, timeout: float) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(self.old)))
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)  # every WAL sender has the old value now
        return self.node.barrier(revision, timeout=timeout)


def sidecar(store: Store, node: Node, *, barrier_timeout: float = 5.0) -> Sidecar:
    settings = Settings("pg0", "z", "127.0.0.1", 5432, barrier_timeout=barrier_timeout)
    return Sidecar(settings, store, node, Metrics("pg0"))


def test_a_k_only_change_is_finalized_only_when_k_standbys_hold_the_barrier(
    etcd3: EtcdCluster, cluster_name: str, pg: PgCluster
) -> None:
    """any 1 -> any 2 changes neither the list nor sync_state. With WAL senders still on
    ANY 1, the barrier is released by pg1 alone; the sidecar must see that only 1 of the 2
    required standbys holds it, and not finalize."""
    store = make_store(etcd3, cluster_name)
    protocol.init(store, members(pg), "pg0", actor="t")
    real = PostgresNode(pg.nodes["pg0"].dsn)
    car = sidecar(store, StaleWalSenders(real, pg.nodes["pg0"].dsn, "ANY 1 (pg1, pg2)"), barrier_timeout=2)
    car.tick()
    assert shown(pg) == "ANY 1 (pg1, pg2)"
    standby = PostgresNode(pg.nodes["pg2"].dsn)
    standby.revoke()  # pg2 stops acknowledging
    standby.close()
    protocol.propose(store, core.SetPolicy(AnyK(2)), actor="t")
    car.tick()
    assert store.read().ruleset.phase == "joint", "finalized although only pg1 of the 2 required holds the barrier"
    assert car.state.barrier_revision is None
    real.close()


def test_two_writers_never_regress_the_setting(etcd3: EtcdCluster, cluster_name: str, pg: PgCluster) -> None:
    """Writer A reads revision 1 and is held right after that read; meanwhile revision 2 is
    committed and writer B applies it. When A resumes, the setting must not go back to
    revision 1. The read inside the setting lock makes B wait for A instead; a read made
    before the lock, or no lock, regresses the setting (tests/mutations shows both)."""
    store = make_store(etcd3, cluster_name)
    protocol.init(store, members(pg), "pg0", actor="t")
    held = HeldStore(store)
    written: list[int] = []  # the revisions whose setting reached PostgreSQL, in the order written
    node_a, node_b = PostgresNode(pg.nodes["pg0"].dsn), PostgresNode(pg.nodes["pg0"].dsn)
    # The term is seen running first, so that A's held read decides an Apply (not the confirmation).
    protocol.confirm(store, store.read_both()[1], node_a.timeline(), None, actor="t")
    a, b = sidecar(held, WriteLog(node_a, written)), sidecar(store, WriteLog(node_b, written))
    held.armed.set()

    def write_a() -> None:
        # B writes revision 2 over A's value before A sees it in force (tick logs the NotInForceError).
        a.tick()

    ta = threading.Thread(target=write_a, name="writer-a")
    ta.start()
    assert held.holding.wait(10), "writer A never read the ruleset"
    protocol.propose(store, core.SetPolicy(AnyK(2)), actor="t")  # revision 2: ANY 2 (pg1, pg2)
    tb = threading.Thread(target=b.tick, name="writer-b")
    tb.start()
    tb.join(2)  # B completes if nothing serialises it behind A; with the lock it waits
    held.release.set()
    ta.join(20)
    tb.join(20)
    assert not ta.is_alive() and not tb.is_alive()
    node_a.close()
    node_b.close()
    assert written == sorted(written), (
        f"the older writer regressed the setting (revisions written, in order: {written})"
    )
    assert shown(pg) == "ANY 2 (pg1, pg2)"


def test_the_gate_refuses_when_a_surveyed_member_is_a_primary(
    etcd3: EtcdCluster, cluster_name: str, pg: PgCluster
) -> None:
    """pg2 was promoted outside pgcohort (or by a term write whose answer was lost): the
    gate must not survey it as a standby, never pick it, and name both primaries."""
    store = make_store(etcd3, cluster_name)
    protocol.init(store, members(pg), "pg0", actor="t")
    outsider = PostgresNode(pg.nodes["pg2"].dsn)
    outsider.promote()
    outsider.close()
    _, before = store.read_both()
    with pytest.raises(RefusedError, match="two primaries, pg0 and pg2"):
        gate.failover(store, connector("user=postgres dbname=postgres connect_timeout=2"), actor="t", writer="t/1")
    assert store.read_both()[1] == before, "a term was written"
