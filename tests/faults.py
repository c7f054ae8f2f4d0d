"""Seeded, reproducible fault schedules: every acknowledged write must survive the failover.

Each schedule builds a fresh PostgreSQL 15 primary (pg0) with streaming standbys pg1-pg3
(members) and pg4 (registered, not a member), one sidecar per node, on a shared 3-member
etcd. A writer commits rows with ``synchronous_commit = on`` throughout and records each
acknowledged one. Between 3 and 6 events drawn from the schedule's seed follow (member add
/ remove, policy change, an etcd member or the leader killed and restarted, etcd quorum
lost and restored, the primary's sidecar killed in the middle of a change, a standby
cut off and reconnected, a standby crashed or partitioned until the end, the last
acknowledging standby lost after the others were cut off), then the
primary fails (kill -9, or SIGSTOP as a hung server), and the gated failover runs. If it
promotes, every acknowledged write must be on the new primary; if it refuses, nothing may
have been promoted.

Besides the random schedules, :data:`PHASES` are fixed ones that fail the primary while a
change is in its joint phase (committed, applied or not, never finalized), for adds,
removals and policy changes, with exactly |E| - K + 1 members of each active rule left
(the gate must promote) or one fewer (it must refuse), and with a second primary beside
the old one (it must refuse and name both).

    python tests/faults.py --schedules 100 [--seed 1]      # more than CI runs
    python tests/faults.py --naive ...                     # the naive orchestrator instead
    python tests/faults.py --phases                        # the fixed joint-phase schedules
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg

from pgcohort import gate, protocol
from pgcohort.adapters.postgres import PostgresNode
from pgcohort.core import ruleset as core
from pgcohort.core import steps
from pgcohort.core.rules import AnyK
from pgcohort.errors import InvalidInputError, PgcohortError, RefusedError
from tests.race import Writer, connect, create_ledger, ledger_ids, naive_failover
from tests.servers import EtcdCluster
from tests.stack import Stack


@dataclass
class Result:
    seed: int | None  # None: a fixed schedule
    events: list[str] = field(default_factory=list)
    acknowledged: int = 0
    lost: int = 0
    promoted: str | None = None
    refused: str = ""

    def line(self) -> str:
        outcome = f"promoted {self.promoted}" if self.promoted else f"refused ({self.refused[:80]})"
        where = "fixed" if self.seed is None else f"seed {self.seed:>5}"
        return f"{where}: {self.acknowledged:>4} acked, {self.lost} lost, {outcome}; {', '.join(self.events)}"


def heal_etcd(etcd: EtcdCluster) -> None:
    for m in etcd.members:
        if m.proc is None or m.proc.poll() is not None:
            etcd.restart(m, wait=False)
        else:
            etcd.cont(m)
    etcd.wait_healthy(30)


def run_schedule(seed: int, etcd: EtcdCluster, *, naive: bool = False) -> Result:
    rnd = random.Random(seed)
    res = Result(seed)
    heal_etcd(etcd)
    st = Stack(cluster=f"fault-{seed}-{'naive' if naive else 'gated'}-{random.getrandbits(32):08x}", etcd=etcd)
    try:
        policy = rnd.choice([1, 1, 2])
        st.start(standbys=3, policy=policy)
        st.pg.add_standby("pg4", "pg0")
        st.start_sidecar("pg4")
        want = f"ANY {policy} (pg1, pg2, pg3)"
        st.wait("the initial setting", lambda: st.primary_setting() == want)
        primary_dsn = st.pg.nodes["pg0"].dsn
        create_ledger(primary_dsn)
        writer = Writer(primary_dsn)
        store = st.store(retry_for=5.0)
        res.events.append(f"any {policy}")
        for _ in range(rnd.randint(3, 6)):
            res.events.append(event(rnd, st, store))
            time.sleep(rnd.uniform(0.1, 0.8))
        if rnd.random() < 0.5:
            res.events.append("primary kill -9")
            st.pg.crash(st.pg.nodes["pg0"])
        else:
            res.events.append("primary SIGSTOP")
            assert st.pg.nodes["pg0"].proc is not None
            os.kill(st.pg.nodes["pg0"].proc.pid, signal.SIGSTOP)
        acked = writer.halt()
        res.acknowledged = len(acked)
        st.sidecars["pg0"].kill()
        heal_etcd(etcd)
        if naive:  # the unsafe path: trust the latest rule, promote the most advanced, record nothing
            view = st.store(retry_for=30).read().ruleset
            res.promoted = naive_failover(view, "pg0")
            st.pg.crash(st.pg.nodes["pg0"])
            res.lost = len(acked - ledger_ids(st.pg.nodes[res.promoted].dsn))
            return res
        try:
            outcome = failover_with_retries(st)
        except RefusedError as e:
            res.refused = str(e).splitlines()[0]
            st.pg.crash(st.pg.nodes["pg0"])
            assert not any(is_primary(st, n) for n in ("pg1", "pg2", "pg3", "pg4")), (
                "refused, yet something was promoted"
            )
            return res
        st.pg.crash(st.pg.nodes["pg0"])  # fence the old primary (the HA manager's job)
        res.promoted = outcome.candidate
        present = ledger_ids(st.pg.nodes[outcome.candidate].dsn)
        res.lost = len(acked - present)
        return res
    finally:
        st.close()


def failover_with_retries(st: Stack) -> gate.Outcome:
    deadline = time.monotonic() + 60
    while True:
        try:
            return gate.failover(st.store(), connect, actor="fault-suite", writer=protocol.new_writer("fault-suite"))
        except RefusedError:
            raise
        except PgcohortError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def is_primary(st: Stack, name: str) -> bool:
    try:
        with psycopg.connect(st.pg.nodes[name].dsn, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row is not None and not row[0])
    except psycopg.Error:
        return False


def event(rnd: random.Random, st: Stack, store: object) -> str:
    assert st.etcd is not None
    kinds = [
        "add", "remove", "policy", "etcd-member", "etcd-leader", "quorum",
        "sidecar-mid-change", "standby-cut", "standby-down", "partition", "last-acker-down",
    ]  # fmt: skip
    kind = rnd.choices(kinds, weights=[3, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2])[0]
    try:
        if kind == "add":
            protocol.propose(st.store(retry_for=3), core.AddMember(st.member("pg4")), actor="fault")
        elif kind == "remove":
            rs = st.store(retry_for=3).read().ruleset
            victims = [m.name for m in rs.rule.cohort if m.name != "pg0"]
            kind = f"remove {rnd.choice(victims)}"
            protocol.propose(st.store(retry_for=3), core.RemoveMember(kind.split()[1]), actor="fault")
        elif kind == "policy":
            k = rnd.choice([1, 2])
            kind = f"policy any {k}"
            protocol.propose(st.store(retry_for=3), core.SetPolicy(AnyK(k)), actor="fault")
        elif kind == "etcd-member":
            m = rnd.choice(st.etcd_cluster.members)
            st.etcd_cluster.kill(m)
            time.sleep(rnd.uniform(0.2, 1.0))
            st.etcd_cluster.restart(m, wait=False)
        elif kind == "etcd-leader":
            m = st.etcd_cluster.leader()
            st.etcd_cluster.kill(m)
            time.sleep(rnd.uniform(0.5, 1.5))
            st.etcd_cluster.restart(m, wait=False)
        elif kind == "quorum":
            paused = rnd.sample(st.etcd_cluster.members, 2)
            for m in paused:
                st.etcd_cluster.stop(m)
            time.sleep(rnd.uniform(1.0, 3.0))
            for m in paused:
                st.etcd_cluster.cont(m)
        elif kind == "sidecar-mid-change":
            rs = st.store(retry_for=3).read().ruleset
            change: core.Change = core.SetPolicy(AnyK(3 - rs.rule.acks()))
            try:
                protocol.propose(st.store(retry_for=3), change, actor="fault")
            finally:
                time.sleep(rnd.uniform(0.0, 0.1))
                st.sidecars["pg0"].kill()
                time.sleep(rnd.uniform(0.2, 1.0))
                st.start_sidecar("pg0")
        elif kind == "standby-cut":
            name = rnd.choice(["pg1", "pg2", "pg3", "pg4"])
            kind = f"cut {name}"
            node = PostgresNode(st.pg.nodes[name].dsn)
            node.revoke(timeout=5)
            time.sleep(rnd.uniform(0.2, 1.0))
            node.follow(st.member("pg0"))
            node.close()
        elif kind == "standby-down":  # a standby crashes and stays down
            name = rnd.choice([n for n in ("pg1", "pg2", "pg3", "pg4") if st.pg.nodes[n].running])
            kind = f"down {name}"
            st.pg.crash(st.pg.nodes[name])
        elif kind == "last-acker-down":  # all but one standby cut off; writes go on; then that one dies
            running = [n for n in ("pg1", "pg2", "pg3", "pg4") if st.pg.nodes[n].running]
            last = rnd.choice(running)
            kind = f"only {last} acks, then {last} down"
            for name in running:
                if name != last:
                    node = PostgresNode(st.pg.nodes[name].dsn)
                    node.revoke(timeout=5)
                    node.close()
            time.sleep(rnd.uniform(0.3, 0.8))
            st.pg.crash(st.pg.nodes[last])
        elif kind == "partition":  # a standby is cut off from the primary until the end
            name = rnd.choice([n for n in ("pg1", "pg2", "pg3", "pg4") if st.pg.nodes[n].running])
            kind = f"partition {name}"
            node = PostgresNode(st.pg.nodes[name].dsn)
            node.revoke(timeout=5)
            node.close()
    except InvalidInputError:
        raise  # the schedule itself asked for something invalid: a bug in the harness, not a refusal
    except PgcohortError as e:
        return f"{kind} (refused: {type(e).__name__})"
    return kind


@dataclass(frozen=True)
class Phase:
    """A fixed schedule: a change held in its joint phase when the primary fails."""

    name: str
    policy: int  # K of the initial rule ANY K (pg1, pg2, pg3)
    change: str  # "add pg4", "remove NAME", "policy K", or "" for none
    applied: bool  # the joint setting was written on the primary before it failed
    down: tuple[str, ...]  # members crashed before the primary fails
    expect: str  # "promote" or "refuse"
    outsider: str = ""  # a member promoted outside pgcohort while the old primary runs
    quiet: str = ""  # a member revoked once the change is applied (a leaving member being decommissioned)

    def proposal(self, st: Stack) -> core.Change | None:
        verb, _, arg = self.change.partition(" ")
        if verb == "add":
            return core.AddMember(st.member(arg))
        if verb == "remove":
            return core.RemoveMember(arg)
        if verb == "policy":
            return core.SetPolicy(AnyK(int(arg)))
        return None


PHASES = (
    Phase("add, joint, not applied", 1, "add pg4", False, (), "promote"),
    Phase("add, joint, applied", 1, "add pg4", True, (), "promote"),
    # The leaving member stops receiving once the removal is applied: otherwise it may be the
    # most advanced, and the gate then refuses by design (it may hold writes no member has).
    Phase("remove, joint, applied", 1, "remove pg3", True, (), "promote", quiet="pg3"),
    Phase("policy 1 to 2, joint, applied", 1, "policy 2", True, (), "promote"),
    Phase(
        "policy 2 to 1, joint, not applied, one below |E|-K+1 of the new rule", 2, "policy 1", False, ("pg3",), "refuse"
    ),
    Phase("add, |E|-K+1 of both rules left", 2, "add pg4", True, ("pg3",), "promote"),
    Phase("add, one below |E|-K+1 of the new rule", 2, "add pg4", True, ("pg3", "pg4"), "refuse"),
    Phase("remove, |E|-K+1 of both rules left", 2, "remove pg1", True, ("pg1",), "promote"),
    Phase("remove, one below |E|-K+1 of the old rule only", 2, "remove pg1", False, ("pg1", "pg2"), "refuse"),
    Phase("a second primary beside the old one", 1, "", False, (), "refuse", outsider="pg2"),
)


def run_phase(phase: Phase, etcd: EtcdCluster) -> Result:
    """Hold ``phase.change`` in its joint phase, fail the primary, run the gate, count losses."""
    res = Result(seed=None, events=[phase.name])
    heal_etcd(etcd)
    st = Stack(cluster=f"phase-{random.getrandbits(32):08x}", etcd=etcd)
    try:
        st.start(standbys=3, policy=phase.policy)
        st.pg.add_standby("pg4", "pg0")
        st.start_sidecar("pg4")
        st.wait("the initial setting", lambda: st.primary_setting() == f"ANY {phase.policy} (pg1, pg2, pg3)")
        primary_dsn = st.pg.nodes["pg0"].dsn
        create_ledger(primary_dsn)
        writer = Writer(primary_dsn)
        st.sidecars["pg0"].kill()  # nothing will finalize: the change stays joint
        change = phase.proposal(st)
        if change is not None:
            protocol.propose(st.store(), change, actor="phase")
        if phase.applied:  # what the primary's sidecar does first: write the joint setting
            snap, term = st.store().read_both()
            node = PostgresNode(primary_dsn)
            try:
                target = steps.desired(snap.ruleset, snap.revision, term.term.primary, "pg0")
                with node.setting_lock() as w:
                    w.write(target)
                node.wait_in_force(target, timeout=10)
            finally:
                node.close()
        if phase.quiet:
            node = PostgresNode(st.pg.nodes[phase.quiet].dsn)
            node.revoke(timeout=5)
            node.close()
        if phase.outsider:  # promoted outside pgcohort; its LSN then jumps past everyone's
            outsider = PostgresNode(st.pg.nodes[phase.outsider].dsn)
            outsider.promote()
            outsider.close()
            with psycopg.connect(st.pg.nodes[phase.outsider].dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE outsider AS SELECT 1 AS x")
                conn.execute("SELECT pg_switch_wal()")
        time.sleep(1.0)  # writes acknowledged under the joint setting
        for name in phase.down:
            st.pg.crash(st.pg.nodes[name])
        time.sleep(0.5)  # and under what is left
        st.pg.crash(st.pg.nodes["pg0"])
        acked = writer.halt()
        res.acknowledged = len(acked)
        try:
            failover_with_retries(st)
        except RefusedError as e:
            res.refused = str(e).splitlines()[0]
            inside = [n for n in ("pg1", "pg2", "pg3", "pg4") if n != phase.outsider]
            assert not any(is_primary(st, n) for n in inside), "refused, yet something was promoted"
        # Judge by the term: whoever it names is where the HA manager sends the writes.
        named = st.store().read_both()[1].term.primary
        if named != "pg0":
            res.promoted = named
            res.lost = len(acked - ledger_ids(st.pg.nodes[named].dsn))
        return res
    finally:
        st.close()


def run(schedules: int, first_seed: int, *, naive: bool = False) -> list[Result]:
    etcd = EtcdCluster(3).start()
    try:
        results = []
        for seed in range(first_seed, first_seed + schedules):
            r = run_schedule(seed, etcd, naive=naive)
            print(r.line(), flush=True)
            results.append(r)
        return results
    finally:
        etcd.close()


def summary(results: list[Result]) -> str:
    return (
        f"fault schedules run: {len(results)}; writes acknowledged: {sum(r.acknowledged for r in results)}; "
        f"writes lost: {sum(r.lost for r in results)}; failovers allowed: {sum(1 for r in results if r.promoted)}; "
        f"refused: {sum(1 for r in results if not r.promoted)}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1, help="first seed; schedule i uses seed+i")
    ap.add_argument("--naive", action="store_true", help="fail over with the naive orchestrator instead of the gate")
    ap.add_argument("--phases", action="store_true", help="run the fixed joint-phase schedules instead")
    args = ap.parse_args()
    if args.phases:
        etcd = EtcdCluster(3).start()
        try:
            wrong = 0
            for phase in PHASES:
                r = run_phase(phase, etcd)
                ok = (r.promoted is not None) == (phase.expect == "promote") and not r.lost
                wrong += not ok
                print(("ok    " if ok else "WRONG ") + r.line(), flush=True)
        finally:
            etcd.close()
        return 1 if wrong else 0
    results = run(args.schedules, args.seed, naive=args.naive)
    print(summary(results))
    return 1 if any(r.lost for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
