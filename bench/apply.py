"""bench/apply: from `pgcohort add` to the primary enforcing the new setting, step by step; load; soak.

Starts the native stack (3-member etcd, a PostgreSQL 15 primary with 3 streaming standbys plus
a fourth standby outside the cohort, one sidecar per node with production timers: 1 s interval,
10 s lease). Each round proposes `add pg4` through the same call the command makes (read,
validate, CAS) and times, from that call, until the primary enforces the setting that includes
pg4 (its sessions show it and pg4's WAL sender reports `quorum`), and until the change is
finalized after the barrier; then pg4 is removed again. The bench itself never spins: the
primary is polled with a 2 ms pause, and the finalize is awaited on a watch.

The primary's sidecar times every step of each change (pgcohort_change_step_seconds, and a
`timings` log line): watch (commit to delivery), lock, read (inside the lock), write (ALTER
SYSTEM + reload), in_force, barrier (the synchronous commit), proof (K standbys report it
flushed), finalize (the CAS). The bench prints their p50/p99 from that log.

    python bench/apply.py [--rounds 100]            quiet machine
    python bench/apply.py --load                    the same rounds again beside 2 busy processes
    python bench/apply.py --soak 30                 30 minutes of steady changes: RSS, CPU, fds
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402

from bench.common import BareCas, ms, pct  # noqa: E402
from pgcohort import protocol  # noqa: E402
from pgcohort.core import ruleset as core  # noqa: E402
from pgcohort.store import EtcdStore  # noqa: E402
from tests.stack import Stack  # noqa: E402

STEPS = ("watch", "lock", "read", "write", "in_force", "barrier", "proof", "finalize")
WIDE, NARROW = "ANY 1 (pg1, pg2, pg3, pg4)", "ANY 1 (pg1, pg2, pg3)"


class Enforcement:
    """Polls the primary on one session, with a 2 ms pause, until it enforces ``expected`` for ``member``."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def wait(self, expected: str, member: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        query = (
            "SELECT current_setting('synchronous_standby_names'),"
            " (SELECT sync_state FROM pg_stat_replication WHERE application_name = %s)"
        )
        while time.monotonic() < deadline:
            row = self.conn.execute(query, (member,)).fetchone()
            if row and row[0] == expected and row[1] == "quorum":
                return time.monotonic()
            time.sleep(0.002)
        raise TimeoutError(f"primary did not enforce {expected!r}")


class Stable:
    """Waits on a watch (no polling) for the ruleset to be stable at a revision past a given one."""

    def __init__(self, store: EtcdStore) -> None:
        self.watch = store.watch()
        self.views = iter(self.watch)

    def after(self, revision: int, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        for view in self.views:
            if view.revision > revision and view.ruleset is not None and view.ruleset.phase == "stable":
                return time.monotonic()
            if time.monotonic() > deadline:
                break
        raise TimeoutError("no finalize")


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(CPU seconds used, RSS bytes, open file descriptors) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss, len(os.listdir(f"/proc/{pid}/fd"))


def spin(until: float) -> None:
    while time.monotonic() < until:
        pass


def rounds(st: Stack, n: int, baseline: BareCas) -> tuple[list[float], list[float]]:
    """``n`` add/remove cycles: (add -> enforcing, add -> finalized) seconds each."""
    store = st.store()
    probe = Enforcement(st.pg.nodes["pg0"].dsn)
    stable = Stable(store)
    enforce, finalized = [], []
    try:
        for _ in range(n):
            baseline.once()
            t0 = time.monotonic()
            done = protocol.propose(store, core.AddMember(st.member("pg4")), actor="bench")
            enforce.append(probe.wait(WIDE, "pg4") - t0)
            finalized.append(stable.after(done.snapshot.revision) - t0)
            done = protocol.propose(store, core.RemoveMember("pg4"), actor="bench")
            stable.after(done.snapshot.revision)
            probe.wait(NARROW, "pg3")
            time.sleep(0.05)
    finally:
        probe.conn.close()
        stable.watch.close()
        store.close()
    return enforce, finalized


def step_timings(log: str, since: int) -> dict[str, list[float]]:
    """Per step, the primary's sidecar's own timings (seconds) of the changes after log offset ``since``."""
    out: dict[str, list[float]] = {s: [] for s in STEPS}
    for line in log[since:].splitlines():
        if " timings revision=" not in line:
            continue
        for step, value in re.findall(r"(\w+)=([\d.]+)", line.split(" timings ", 1)[1]):
            if step in out:
                out[step].append(float(value) / 1000)
    return out


def report(title: str, enforce: list[float], finalized: list[float], steps: dict[str, list[float]]) -> None:
    print(f"  {title}")
    print(f"    add -> primary enforces    p50 {ms(pct(enforce, 50))}  p99 {ms(pct(enforce, 99))}  "
          "(targets: p50 <= 25 ms, p99 <= 100 ms)")  # fmt: skip
    print(f"    add -> finalized           p50 {ms(pct(finalized, 50))}  p99 {ms(pct(finalized, 99))}  "
          "(target: p99 <= 150 ms)")  # fmt: skip
    adds = len(enforce)
    print(f"    the primary's sidecar, per step ({len(steps['finalize'])} changes: {adds} adds and their removals):")
    for step in STEPS:
        values = steps[step]
        if values:
            print(f"      {step:<9} p50 {ms(pct(values, 50))}  p99 {ms(pct(values, 99))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--load", action="store_true", help="then repeat the rounds beside two busy processes")
    ap.add_argument("--soak", type=float, metavar="MINUTES", help="steady changes for this long; RSS, CPU, fds")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle to measure sidecar CPU over")
    args = ap.parse_args()

    st = Stack(extra_env={"PGCOHORT_SIDECAR_INTERVAL": "1", "PGCOHORT_SIDECAR_TTL": "10"})
    try:
        st.start(standbys=3)
        st.pg.add_standby("pg4", "pg0")
        st.start_sidecar("pg4")
        st.wait("initial apply", lambda: st.primary_setting() == NARROW)
        baseline = BareCas(st.etcd_cluster.leader().client_port)
        car = st.sidecars["pg0"]
        rounds(st, 5, BareCas(st.etcd_cluster.leader().client_port, key="/bench/warm"))  # warm up

        print(f"bench/apply: 3-member etcd, PostgreSQL 15 primary + 4 standbys, 5 sidecars, {args.rounds} adds")
        mark = len(car.log)
        quiet = rounds(st, args.rounds, baseline)
        quiet_steps = step_timings(car.log, mark)
        bare = baseline.samples
        print(f"  bare etcd CAS txn (same run)   p50 {ms(pct(bare, 50))}  p99 {ms(pct(bare, 99))}")
        report("quiet:", *quiet, quiet_steps)
        if args.load:
            loaded_baseline = BareCas(st.etcd_cluster.leader().client_port, key="/bench/loaded")
            until = time.monotonic() + 3600
            busy = [multiprocessing.Process(target=spin, args=(until,), daemon=True) for _ in range(2)]
            for p in busy:
                p.start()
            try:
                mark = len(car.log)
                loaded = rounds(st, args.rounds, loaded_baseline)
                loaded_steps = step_timings(car.log, mark)
            finally:
                for p in busy:
                    p.kill()
            lb = loaded_baseline.samples
            print(f"  bare etcd CAS txn, loaded      p50 {ms(pct(lb, 50))}  p99 {ms(pct(lb, 99))}")
            report("beside 2 busy processes (both cores):", *loaded, loaded_steps)
            for name, q, lo in (("enforces", quiet[0], loaded[0]), ("finalized", quiet[1], loaded[1])):
                print(f"    loaded p99 / quiet p99, add -> {name}: {pct(lo, 99) / pct(q, 99):.2f}x (target <= 3x)")

        time.sleep(2)
        pids = {n: c.proc.pid for n, c in st.sidecars.items() if c.proc}
        before = {n: proc_stats(pid) for n, pid in pids.items()}
        time.sleep(args.idle)
        after = {n: proc_stats(pid) for n, pid in pids.items()}
        for name in ("pg0", "pg1"):
            cpu = (after[name][0] - before[name][0]) / args.idle * 100
            print(f"  idle sidecar {name} ({'primary' if name == 'pg0' else 'standby'}): RSS "
                  f"{after[name][1] / 2**20:5.1f} MB, CPU {cpu:4.2f}% of a core over {args.idle:g}s, "
                  f"{after[name][2]} open fds")  # fmt: skip

        if args.soak:
            soak(st, args.soak, pids)
        return 0
    finally:
        st.close()


def soak(st: Stack, minutes: float, pids: dict[str, int]) -> None:
    """Steady changes (an add or a removal every 2 s) for ``minutes``; each sidecar's RSS, CPU and fds."""
    start = {n: proc_stats(pid) for n, pid in pids.items()}
    t0 = time.monotonic()
    end = t0 + minutes * 60
    changes = 0
    samples: list[float] = []
    baseline = BareCas(st.etcd_cluster.leader().client_port, key="/bench/soak")
    while time.monotonic() < end:
        e, _ = rounds(st, 1, baseline)
        samples += e
        changes += 2
        time.sleep(max(0.0, 4 - (time.monotonic() - t0) % 4))
    stop = {n: proc_stats(pid) for n, pid in pids.items()}
    span = time.monotonic() - t0
    print(f"  soak: {span / 60:.1f} min, {changes} changes; add -> enforces p50 {ms(pct(samples, 50))} "
          f"p99 {ms(pct(samples, 99))}")  # fmt: skip
    for name in sorted(pids):
        (c0, r0, f0), (c1, r1, f1) = start[name], stop[name]
        print(f"    sidecar {name}: RSS {r0 / 2**20:5.1f} -> {r1 / 2**20:5.1f} MB, open fds {f0} -> {f1}, "
              f"CPU {(c1 - c0) / span * 100:4.2f}% of a core")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
