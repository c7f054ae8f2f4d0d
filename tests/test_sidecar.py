"""Sidecars on a real 3-member etcd and a real PostgreSQL 15 primary with 3 streaming standbys."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.core.rules import AnyK
from tests.servers import free_ports
from tests.stack import SidecarProcess, Stack

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def stack(running_stack: Stack) -> Stack:
    return running_stack


class Timeline:
    """Polls the primary's setting and the committed ruleset, recording when each changes."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        self.settings: list[tuple[float, str]] = []
        self.rulesets: list[tuple[float, int, core.Ruleset]] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._poll_pg, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _poll_pg(self) -> None:
        with psycopg.connect(self.st.pg.nodes["pg0"].dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                with psycopg.connect(self.st.pg.nodes["pg0"].dsn, autocommit=True) as fresh:
                    row = fresh.execute("SHOW synchronous_standby_names").fetchone()
                value = str(row[0]) if row else ""
                if not self.settings or self.settings[-1][1] != value:
                    self.settings.append((time.monotonic(), value))
                conn.execute("SELECT 1")

    def _watch(self) -> None:
        self.watch = self.st.store().watch()
        for view in self.watch:
            if view.ruleset is not None:
                self.rulesets.append((time.monotonic(), view.revision, view.ruleset))

    def first(self, setting: str) -> float:
        return next(t for t, v in self.settings if v == setting)

    def committed(self, predicate: Callable[[core.Ruleset], bool]) -> tuple[float, int, core.Ruleset]:
        return next(r for r in self.rulesets if predicate(r[2]))

    def close(self) -> None:
        self.stop.set()
        self.watch.close()
        for t in self.threads:
            t.join(5)


def same_revision_everywhere(st: Stack) -> int:
    revision = st.store().read().revision

    def agree() -> bool:
        return all(car.get("/ruleset")[1].get("revision") == revision for car in st.sidecars.values())

    st.wait(f"every sidecar's /ruleset at revision {revision}", agree)
    return revision


def test_add_is_enforced_only_after_commit_and_finalized_after_barrier(stack: Stack) -> None:
    st = stack
    st.pg.add_standby("pg4", "pg0")
    st.start_sidecar("pg4")
    tl = Timeline(st)
    try:
        time.sleep(0.3)
        assert "pg4" not in st.primary_setting()  # registered and streaming, but not a member
        before_commit = time.monotonic()
        added = protocol.propose(st.store(), core.AddMember(st.member("pg4")), actor="test")
        st.wait("the add to be finalized", lambda: st.store().read().ruleset.phase == "stable")
        final = st.store().read()
        time.sleep(0.2)
    finally:
        tl.close()
    wide = "ANY 1 (pg1, pg2, pg3, pg4)"
    assert st.primary_setting() == wide
    assert tl.first(wide) > before_commit, "the setting included pg4 before the add was committed"
    _, rev_joint, _ = tl.committed(lambda rs: rs.phase == "joint")
    _, rev_final, _ = tl.committed(lambda rs: rs.version == added.snapshot.ruleset.version + 1)
    assert rev_joint == added.snapshot.revision and rev_final == final.revision
    primary = st.store().nodes()["pg0"]
    assert primary.barrier_revision == rev_joint  # the barrier was for the joint revision
    log = st.sidecars["pg0"].log
    applied = log.index(f"applied revision {rev_joint}: synchronous_standby_names = {wide}")
    barrier = log.index(f"barrier for revision {rev_joint} at LSN")
    assert applied < barrier < log.index(f"finalized at revision {rev_final}"), "finalized before apply and barrier"
    assert same_revision_everywhere(st) == final.revision
    assert all(car.get("/health")[0] == 200 for car in st.sidecars.values())


def test_remove_narrows_before_finalize(stack: Stack) -> None:
    st = stack
    tl = Timeline(st)
    try:
        removed = protocol.propose(st.store(), core.RemoveMember("pg3"), actor="test")
        assert removed.snapshot.ruleset.phase == "joint"
        st.wait("the removal to be finalized", lambda: st.store().read().ruleset.phase == "stable")
        time.sleep(0.2)
    finally:
        tl.close()
    narrow = "ANY 1 (pg1, pg2)"
    _, rev_final, _ = tl.committed(lambda rs: rs.phase == "stable" and rs.rule.member("pg3") is None)
    log = st.sidecars["pg0"].log
    narrowed = log.index(f"applied revision {removed.snapshot.revision}: synchronous_standby_names = {narrow}")
    assert narrowed < log.index(f"finalized at revision {rev_final}"), "finalize came before the setting narrowed"
    joint = [rs for _, _, rs in tl.rulesets if rs.phase == "joint"]
    assert joint and joint[0].show() == "any 1 of (pg0 pg1 pg2) && any 1 of (pg0 pg1 pg2 pg3)"
    assert st.primary_setting() == narrow
    same_revision_everywhere(st)


@pytest.mark.fault
def test_sidecar_killed_between_apply_and_finalize_resumes(stack: Stack) -> None:
    st = stack
    for name in ("pg1", "pg2", "pg3"):  # no standby can acknowledge: the barrier will wait
        st.pg.crash(st.pg.nodes[name])
    protocol.propose(st.store(), core.SetPolicy(AnyK(2)), actor="test")
    st.wait("the new setting applied", lambda: st.primary_setting() == "ANY 2 (pg1, pg2, pg3)")
    st.wait("the barrier to be pending", lambda: "not acknowledged" in st.sidecars["pg0"].log, timeout=30)
    st.sidecars["pg0"].kill()  # SIGKILL between apply and finalize
    assert st.store().read().ruleset.phase == "joint"
    for name in ("pg1", "pg2", "pg3"):
        st.pg.start(st.pg.nodes[name])
    st.start_sidecar("pg0")
    st.wait(
        "the change to be finalized after the restart", lambda: st.store().read().ruleset.phase == "stable", timeout=30
    )
    history = st.store().history()
    assert [rs.reason for _, rs in history][-2:] == ["policy any 2", "finalize policy any 2"]
    assert st.primary_setting() == "ANY 2 (pg1, pg2, pg3)"


@pytest.mark.fault
def test_two_sidecars_beside_the_primary_never_regress(stack: Stack) -> None:
    st = stack
    # A second sidecar process for pg0, as after a botched redeploy: both act beside the primary.
    (port,) = free_ports(1)
    env = {**st.env_for(st.pg.nodes["pg0"], port)}
    second = SidecarProcess("pg0-second", port, st.pg.root + "/sidecar-pg0-second.log", env)
    second.start()
    second.wait_http()
    tl = Timeline(st)
    changes: list[core.Change] = [
        core.SetPolicy(AnyK(2)),
        core.RemoveMember("pg3"),
        core.SetPolicy(AnyK(1)),
        core.RemoveMember("pg2"),
        core.AddMember(st.member("pg3")),
    ]
    committed = [
        "ANY 1 (pg1, pg2, pg3)",
        "ANY 2 (pg1, pg2, pg3)",
        "ANY 2 (pg1, pg2)",
        "ANY 1 (pg1, pg2)",
        "ANY 1 (pg1)",
        "ANY 1 (pg1, pg3)",
    ]
    try:
        for change in changes:
            protocol.propose(st.store(), change, actor="test")
            st.wait("finalize", lambda: st.store().read().ruleset.phase == "stable")
        time.sleep(0.3)
    finally:
        tl.close()
        second.kill()
    assert "applied revision" in second.log and "applied revision" in st.sidecars["pg0"].log  # both acted
    # Every setting the primary showed is a committed one, in commit order: never an older one again.
    shown = [v for _, v in tl.settings]
    order = [committed.index(v) for v in shown]
    assert order == sorted(set(order)), f"the setting went back to an older revision: {shown}"
    assert shown[-1] == committed[-1]


@pytest.mark.fault
def test_etcd_quorum_lost_keeps_setting_and_resumes(stack: Stack) -> None:
    st = stack
    protocol.propose(st.store(), core.SetPolicy(AnyK(2)), actor="test")
    st.wait("finalize", lambda: st.store().read().ruleset.phase == "stable")
    setting = st.primary_setting()
    paused = st.etcd_cluster.members[1:]
    for m in paused:
        st.etcd_cluster.stop(m)
    try:
        st.wait(
            "every /health to fail", lambda: all(c.get("/health")[0] == 503 for c in st.sidecars.values()), timeout=30
        )
        _, body = st.sidecars["pg0"].get("/health")
        assert any("etcd" in p for p in body["problems"]), body
        time.sleep(2)
        assert st.primary_setting() == setting  # nothing changed while etcd had no quorum
    finally:
        for m in paused:
            st.etcd_cluster.cont(m)
    st.wait(
        "every /health to pass again", lambda: all(c.get("/health")[0] == 200 for c in st.sidecars.values()), timeout=40
    )
    protocol.propose(st.store(), core.SetPolicy(AnyK(1)), actor="test")  # and it acts again, without a restart
    st.wait("the next change applied", lambda: st.primary_setting() == "ANY 1 (pg1, pg2, pg3)", timeout=30)
    assert all(c.proc is not None and c.proc.poll() is None for c in st.sidecars.values())


def test_auto_admit_brings_a_caught_up_standby_in(stack: Stack) -> None:
    st = stack
    st.sidecars["pg0"].kill()
    st.start_sidecar("pg0", PGCOHORT_SIDECAR_AUTO_ADMIT="true", PGCOHORT_SIDECAR_ADMIT_STABLE_FOR="1")
    tl = Timeline(st)
    try:
        st.pg.add_standby("pg4", "pg0")  # scaling 3 -> 4 replicas
        st.start_sidecar("pg4")
        st.wait(
            "pg4 admitted and finalized",
            lambda: (rs := st.store().read().ruleset).phase == "stable" and rs.rule.member("pg4") is not None,
            timeout=30,
        )
        wide = "ANY 1 (pg1, pg2, pg3, pg4)"
        assert st.primary_setting() == wide
        admitted_at, _, _ = tl.committed(lambda rs: rs.rule.member("pg4") is not None)
        # admitted_at is when a watcher saw the commit, a few ms after it; 0.5 s absorbs that.
        assert tl.first(wide) > admitted_at - 0.5, "the setting counted pg4 before its admission was committed"
    finally:
        tl.close()
    reasons = [rs.reason for _, rs in st.store().history()]
    assert "add pg4" in reasons and reasons[-1] == "finalize add pg4"


def test_sigterm_keeps_the_member_and_leave_on_stop_scales_down(stack: Stack) -> None:
    """A restart (systemctl, a crash loop, an image upgrade) keeps the node's member; with sidecar.leave_on_stop,
    SIGTERM removes it first (scale-down)."""
    st = stack
    version = st.store().read().ruleset.version
    car = st.sidecars["pg3"]
    car.signal(signal.SIGTERM)
    assert car.wait_exit(60) == 0
    assert "pg3 stays in the cohort" in car.log
    rs = st.store().read().ruleset
    assert rs.version == version and rs.rule.member("pg3") is not None
    st.start_sidecar("pg3")
    time.sleep(1.5)
    assert st.store().read().ruleset.version == version

    st.sidecars["pg2"].kill()
    car = st.start_sidecar("pg2", PGCOHORT_SIDECAR_LEAVE_ON_STOP="true")
    car.signal(signal.SIGTERM)
    assert car.wait_exit(60) == 0
    rs = st.store().read().ruleset
    assert rs.phase == "stable" and rs.rule.member("pg2") is None
    assert st.primary_setting() == "ANY 1 (pg1, pg3)"
    assert "pg2" not in st.store().nodes()
    assert "removed pg2" in car.log
