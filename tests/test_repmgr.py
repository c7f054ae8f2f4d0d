"""pgcohort beside real repmgr 5.3 and repmgrd (tests/repmgr.py, tests/repmgr_gated.py), a real 3-member etcd.

* The seed's race (p = pg0; b, c = pg1, pg2; d = pg3 under ``ANY 1 (pg1, pg2, pg3)``): write 1 is
  acknowledged by all, write 2 by d alone (b's and c's WAL receivers paused); d's repmgrd is stopped
  cleanly (so repmgr's elections skip d), p is killed -9, and b's and c's receivers are killed (the
  WAL in flight to them is gone). repmgr alone promotes b or c: write 2 is lost. With pgcohort the
  gate vetoes repmgr's candidate (d is ahead), promotes d itself with the rule in force, repoints b
  and c to it, and the veto stands: write 2 is kept, and only d was ever promoted.
* Steering where the safe member's repmgrd runs: d's PostgreSQL restarts right after the kill (its
  repmgrd's registration in shared memory is gone, so repmgr skips d), the gate steers to d, and d's
  repmgrd takes over as the primary's.
* kill -9 of the primary under a stream of acknowledged writes: repmgrd elects, the gate allows the
  safe candidate after putting the rule rendered for it in force on it and repointing the others to
  it; repmgr promotes it; every acknowledged write is there.
* A veto with no member safe (one member down): repmgrd elects the same candidate again after each
  veto; each costs ``election_rerun_interval`` + the failure detection + the gate's own run; once the
  member is back the gate allows.
* ``pgcohort add`` of a standby registered with repmgr: a non-member gets priority 0 in repmgr.nodes
  (repmgrd never elects it), and the setting names it only after the add commits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import need
from tests.pg import PG_BIN
from tests.race import Writer, acked_write, create_ledger, ledger_ids
from tests.repmgr import REPMGR, REPMGRD, RepmgrCluster, build
from tests.repmgr_gated import Gated
from tests.servers import EtcdCluster

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.slow]

SSN = "ANY 1 (pg1, pg2, pg3)"
FOUR = ("pg0", "pg1", "pg2", "pg3")


def need_repmgr() -> None:
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    need(REPMGR, "repmgr 5.3 (Debian's postgresql-15-repmgr)")
    need(REPMGRD, "repmgrd (Debian's postgresql-15-repmgr)")


@pytest.fixture
def gated(etcd3: EtcdCluster) -> Iterator[Gated]:
    need_repmgr()
    g = Gated(etcd3, "repmgr-" + uuid.uuid4().hex[:8])
    try:
        yield g
    finally:
        g.close()


def race(c: RepmgrCluster, before_kill: list[str] | None = None) -> tuple[float, dict[str, int]]:
    """Writes 1 (everyone) and 2 (d alone); d's repmgrd stopped cleanly; p killed -9; b's and c's WAL receivers
    killed (their in-flight WAL lost). Returns the moment of the kill and the receivers killed."""
    c.settle()
    p = c.nodes["pg0"].dsn
    create_ledger(p)
    assert acked_write(p, 1)
    c.settle()
    receivers = {n: c.wal_receiver(n) for n in ("pg1", "pg2")}
    assert all(receivers.values()), receivers
    for pid in receivers.values():
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
    assert acked_write(p, 2, timeout=10), "write 2 was not acknowledged (by d)"
    c.stop_repmgrd("pg3")
    killed = c.kill("pg0")
    for pid in receivers.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the standby crash-restarts without write 2's WAL
    return killed, {n: pid for n, pid in receivers.items() if pid is not None}


def promoted_by_repmgr(c: RepmgrCluster, name: str) -> bool:
    """The node's repmgrd ran its promote_command."""
    return bool(c.log_lines(name, "promote_command is"))


def test_repmgr_alone_promotes_a_member_without_the_acknowledged_write() -> None:
    need_repmgr()
    c = build(FOUR)
    try:
        p = c.nodes["pg0"]
        p.query(f"ALTER SYSTEM SET synchronous_standby_names = '{SSN}'")
        p.query("SELECT pg_reload_conf()")
        c.wait(
            "the setting in force",
            lambda: p.query("SHOW synchronous_standby_names")[0]["synchronous_standby_names"] == SSN,
        )
        killed, _ = race(c)
        new = c.wait_primary(60, not_=["pg0"])
        took = time.monotonic() - killed
        assert new in ("pg1", "pg2"), new
        assert ledger_ids(c.nodes[new].dsn) == {1}, "repmgr alone kept write 2: the race was not reproduced"
        assert c.log_lines(new, 'repmgrd not running on node "pg3"') or c.log_lines(
            "pg1" if new == "pg2" else "pg2", 'repmgrd not running on node "pg3"'
        )
        print(f"\n  repmgr alone promoted {new} {took:.2f} s after the kill: the acknowledged write 2 is lost")
    finally:
        c.close()


def test_gated_repmgr_vetoes_the_unsafe_candidate_promotes_the_member_holding_the_write(gated: Gated) -> None:
    g, c = gated, gated.repmgr
    g.build(FOUR)
    g.wait("the rule in force", lambda: g.setting("pg0") == SSN)
    g.stop_sidecar("pg0")  # the whole machine goes: its sidecar too
    killed, _ = race(c)
    new = c.wait_primary(60, not_=["pg0"])
    took = time.monotonic() - killed
    assert new == "pg3", f"{new} was promoted"
    assert ledger_ids(c.nodes["pg3"].dsn) == {1, 2}, "write 2 was lost"
    for n in ("pg1", "pg2"):
        c.wait_following(n, "pg3", 30)
    followed = time.monotonic() - killed

    calls = g.wait("the gate's run logged", g.gate_calls)
    assert all(x.status == 3 and x.candidate in ("pg1", "pg2") for x in calls), calls
    steered = [line for n in ("pg1", "pg2") for line in c.log_lines(n, "Steered: promoted pg3 instead")]
    assert steered, g.tails()
    vetoed = [line for n in ("pg1", "pg2") for line in c.log_lines(n, "behind pg3")]
    assert vetoed, g.tails()
    # The veto stood: no repmgrd promoted its own candidate after the gate promoted pg3.
    assert not any(promoted_by_repmgr(c, n) for n in ("pg1", "pg2")), g.tails()
    term = g.store().read_both()[1].term
    assert (term.term, term.primary, term.forced) == (2, "pg3", "")
    assert g.setting("pg3") == "ANY 1 (pg0, pg1, pg2)"  # promoted with the rule rendered for it in force
    rows = {r["node_name"]: r for r in c.metadata("pg3")}  # repmgr's metadata as `repmgr standby promote` leaves it
    assert (rows["pg3"]["type"], rows["pg3"]["active"], rows["pg0"]["active"]) == ("primary", True, False)
    assert rows["pg1"]["upstream_node_id"] == rows["pg2"]["upstream_node_id"] == c.nodes["pg3"].node_id
    assert acked_write(c.nodes["pg3"].dsn, 3), "the new primary does not get its commits acknowledged"
    for n in ("pg1", "pg2"):
        g.wait(f"{n} replaying write 2", lambda n=n: 2 in ledger_ids(c.nodes[n].dsn), 30)
    print(
        f"\n  gated: {len(calls)} gate run(s) vetoed {sorted({x.candidate for x in calls})}; pg3 promoted by the gate "
        f"{took:.2f} s after the kill, pg1 and pg2 streaming from it after {followed:.2f} s; write 2 kept"
    )


def test_steering_to_a_member_whose_repmgrd_runs_hands_the_primary_to_it(gated: Gated) -> None:
    """d's PostgreSQL restarts right after the kill: repmgr skips d (its repmgrd's registration is gone with the
    shared memory) and elects b or c; the gate steers to d, whose repmgrd then monitors it as the primary.

    d's repmgrd is paused across the restart and resumed once the gate has run: left running, it registers
    again within a monitor interval and wins the election itself about one run in three (then the gate
    allows d at once and nothing is steered)."""
    g, c = gated, gated.repmgr
    g.build(FOUR)
    g.wait("the rule in force", lambda: g.setting("pg0") == SSN)
    c.settle()
    p = c.nodes["pg0"].dsn
    create_ledger(p)
    assert acked_write(p, 1)
    c.settle()
    receivers = {n: c.wal_receiver(n) for n in ("pg1", "pg2")}
    for pid in receivers.values():
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
    assert acked_write(p, 2, timeout=10)
    g.stop_sidecar("pg0")
    killed = c.kill("pg0")
    for pid in receivers.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    repmgrd = c.nodes["pg3"].repmgrd
    assert repmgrd is not None
    os.kill(repmgrd.pid, signal.SIGSTOP)
    try:
        c.stop_postgres("pg3", "immediate")
        c.start_postgres("pg3")  # its repmgrd is unregistered until it runs again and notices
        g.wait("the gate's first run", g.gate_calls, 60)
    finally:
        os.kill(repmgrd.pid, signal.SIGCONT)
    new = c.wait_primary(60, not_=["pg0"])
    took = time.monotonic() - killed
    assert new == "pg3" and ledger_ids(c.nodes["pg3"].dsn) == {1, 2}, (new, g.tails())
    calls = g.wait("the gate's run logged", g.gate_calls)
    assert all(x.status == 3 for x in calls), calls
    assert not any(promoted_by_repmgr(c, n) for n in ("pg1", "pg2"))
    c.wait_settled("pg3", 60)  # pg3's repmgrd monitors it as the primary, pg1 and pg2 follow it
    assert c.nodes["pg3"].repmgrd_running and c.repmgrd_state("pg3")["upstream"] == -1  # type: ignore[index]
    print(
        f"\n  steered to pg3 (its repmgrd running) {took:.2f} s after the kill after {len(calls)} veto(es); "
        "repmgr settled on it"
    )


def test_kill_9_of_the_primary_the_gate_allows_a_safe_candidate_and_nothing_is_lost(gated: Gated) -> None:
    """Only the primary's sidecar runs, so that nothing but the gate can have put the rule on the new primary."""
    g, c = gated, gated.repmgr
    g.build(("pg0", "pg1", "pg2"), sidecars=False, adopt=False)
    g.start_sidecar("pg0")
    g.pgcohort("init", "--from-repmgr", c.nodes["pg0"].dsn)
    g.wait("the rule in force", lambda: g.setting("pg0") == "ANY 1 (pg1, pg2)")
    c.settle()
    create_ledger(c.nodes["pg0"].dsn)
    writer = Writer(c.nodes["pg0"].dsn)
    g.wait("acknowledged writes", lambda: len(writer.acked) >= 20, 30)
    g.stop_sidecar("pg0")
    killed = c.kill("pg0")
    acked = writer.halt()
    new = c.wait_primary(60, not_=["pg0"])
    took = time.monotonic() - killed
    other = "pg2" if new == "pg1" else "pg1"
    rendered = f"ANY 1 (pg0, {other})"
    assert g.setting(new) == rendered, "the new primary was promoted without the rule rendered for it"
    missing = acked - ledger_ids(c.nodes[new].dsn)
    assert not missing, f"acknowledged writes lost: {sorted(missing)[:10]}"
    calls = g.wait("the gate's run logged", g.gate_calls)
    assert (calls[0].candidate, calls[0].status) == (new, 0), calls
    assert all(x.status != 0 for x in calls[1:]), f"a second candidate was allowed: {calls}"
    assert promoted_by_repmgr(c, new), "repmgr's promote_command did not promote the allowed candidate"
    term = g.store().read_both()[1].term
    assert (term.term, term.primary) == (2, new)
    c.wait_following(other, new, 30)
    assert acked_write(c.nodes[new].dsn, 10**6), "the new primary's commits are not acknowledged"
    c.wait_settled(new, 30)
    gate_took = calls[0].ended - calls[0].started
    print(
        f"\n  kill -9 of pg0 -> {new} writable after {took:.2f} s ({len(acked)} acknowledged writes, none lost); "
        f"the gate ran {gate_took:.2f} s"
    )


def test_a_veto_with_no_safe_member_costs_a_rerun_and_the_gate_allows_once_the_member_is_back(gated: Gated) -> None:
    g, c = gated, gated.repmgr
    g.build(FOUR)
    g.wait("the rule in force", lambda: g.setting("pg0") == SSN)
    c.settle()
    create_ledger(c.nodes["pg0"].dsn)
    assert acked_write(c.nodes["pg0"].dsn, 1)
    c.settle()
    g.stop_sidecar("pg3")
    c.stop_repmgrd("pg3")
    c.stop_postgres("pg3")  # any 1 of three standbys: a failover must reach all three
    g.stop_sidecar("pg0")
    killed = c.kill("pg0")
    g.wait("two vetoes", lambda: len([x for x in g.gate_calls() if x.status == 3]) >= 2, 60)
    c.start_postgres("pg3")
    new = c.wait_primary(60, not_=["pg0"])
    took = time.monotonic() - killed
    calls = g.wait("the allowing run logged", lambda: (got := g.gate_calls()) and got[-1].status == 0 and got)
    vetoes = [x for x in calls if x.status == 3]
    assert calls[-1].status == 0 and calls[-1].candidate == new, calls
    assert {x.candidate for x in calls} == {new}, f"repmgr elected another candidate after a veto: {calls}"
    assert 1 in ledger_ids(c.nodes[new].dsn)
    said = c.log_lines(new, "needs 3 of its 3 standbys surveyed, reached 2")
    assert said, g.tails()
    gaps = [b.started - a.ended for a, b in zip(calls, calls[1:], strict=False)]
    t = c.timings
    assert all(t.election_rerun_interval <= gap <= t.election_rerun_interval + t.detection() + 3 for gap in gaps), gaps
    costs = [b.started - a.started for a, b in zip(calls, calls[1:], strict=False)]
    for n in set(c.nodes) - {"pg0", new}:
        c.wait_following(n, new, 30)
    print(
        f"\n  {len(vetoes)} vetoes of {new} (pg3 down), then allowed once pg3 was back; {took:.2f} s from the kill; "
        f"each veto cost {min(costs):.2f}-{max(costs):.2f} s from one gate run to the next "
        f"(election_rerun_interval {t.election_rerun_interval} + detection {t.detection():.0f} + the gate's run)"
    )


class SettingPoller:
    """``synchronous_standby_names`` on one node every 10 ms, with the moment each value was first seen."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.seen: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.01):
                row = conn.execute("SHOW synchronous_standby_names").fetchone()
                value = str(row[0]) if row else ""
                if not self.seen or self.seen[-1][1] != value:
                    self.seen.append((time.monotonic(), value))

    def first(self, value: str) -> float:
        return next(t for t, v in self.seen if v == value)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_pgcohort_add_of_a_repmgr_registered_standby_changes_the_setting_only_after_the_commit(gated: Gated) -> None:
    """Then, in the same cluster: ``pgcohort failover`` by hand (repmgrd paused) writes repmgr's metadata as repmgr
    would, and repmgrd, unpaused, settles on the new primary. Before: a gate with a mistyped cluster name vetoes,
    naming the root the adoption recorded in repmgr.events."""
    g, c = gated, gated.repmgr
    g.build(("pg0", "pg1", "pg2"))
    narrow, wide = "ANY 1 (pg1, pg2)", SSN
    typo = g.pgcohort("gate", "--candidate", "pg1", "--cluster", "typo", check=False)
    assert typo.returncode == 3 and f"manages this cluster at /pgcohort/{g.cluster_name}/" in typo.stderr, typo.stderr
    assert "init --from-repmgr CONNINFO" in typo.stderr
    g.wait("the rule in force", lambda: g.setting("pg0") == narrow)
    d = g.add_standby("pg3", "pg0")  # repmgr standby clone + register: priority 100 in its repmgr.conf
    c.start_repmgrd("pg3")
    g.start_sidecar("pg3")
    g.wait("pg3 priority 0 (not a member: repmgrd never elects it)", lambda: g.priority("pg3", "pg0") == 0)
    poller = SettingPoller(c.nodes["pg0"].dsn)
    try:
        time.sleep(1.0)  # registered with repmgr, streaming, its sidecar running: not in the rule
        assert g.setting("pg0") == narrow
        before = time.monotonic()
        out = g.pgcohort("add", f"pg3@127.0.0.1:{d.port}")
        g.wait("the rule naming pg3 in force", lambda: g.setting("pg0") == wide)
        g.wait("the add finalized", lambda: g.store().read().ruleset.phase == "stable")
    finally:
        poller.close()
    assert poller.first(wide) > before, "the setting named pg3 before the add was committed"
    joint = int(out.stdout.split("at revision ")[1].split(":")[0])
    log = g.sidecars["pg0"].log
    applied = log.index(f"applied revision {joint}: synchronous_standby_names = {wide}")
    assert applied < log.index(f"barrier for revision {joint} at LSN") < log.index("finalized at revision")
    g.wait("pg3's priority back (a member)", lambda: g.priority("pg3", "pg0") == 100)
    status = g.pgcohort("status", "--json").stdout
    assert '"pg3"' in status
    print(f"\n  {out.stdout.splitlines()[0]}; the primary enforced {wide!r} {poller.first(wide) - before:.2f} s later")

    c.settle()
    c.repmgr("pg1", "service", "pause")
    g.stop_sidecar("pg0")
    c.kill("pg0")
    done = g.pgcohort("failover", node="pg1")
    new = c.wait_primary(30, not_=["pg0"])
    assert f"promoted {new}" in done.stdout, done.stdout
    rows = {r["node_name"]: r for r in c.metadata(new)}
    assert (rows[new]["type"], rows[new]["active"], rows["pg0"]["active"]) == ("primary", True, False)
    assert all(rows[n]["upstream_node_id"] == c.nodes[new].node_id for n in set(rows) - {"pg0", new})
    c.repmgr(new, "service", "unpause", check=False)  # pg0 is gone: repmgr says it could not unpause it
    c.wait_settled(new, 60)  # every repmgrd monitors the new primary
