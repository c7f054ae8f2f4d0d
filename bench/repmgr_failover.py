"""bench/repmgr_failover: kill -9 of the primary to a new primary accepting writes, repmgr alone vs repmgr + pgcohort.

A fresh 3-node repmgr 5.3 cluster (PostgreSQL 15, one repmgrd each, real 3-member etcd) per round,
in each mode:

* ``alone``    -- repmgr as shipped: no ``failover_validation_command``, no synchronous rule;
* ``pgcohort`` -- the gate as ``failover_validation_command``, a sidecar per node, the cluster adopted
  with ``pgcohort init --from-repmgr`` (rule ``any 1``: ``ANY 1 (pg1, pg2)`` on pg0).

A writer commits rows on the primary (``synchronous_commit = on``) until the kill. Measured from
the kill (PostgreSQL and repmgrd of the primary, kill -9): **promoted** (a standby left recovery)
and **writable** (its first commit returns; under pgcohort that needs a standby streaming from it,
since the new primary runs with the rule from its first commit). Printed: p50 and p99 per mode
and the ratio of the p50s (target <= 1.1x).

Then **the cost of one veto** (``--veto-rounds``, 4 nodes, rule ``any 1`` of three standbys): one
standby's PostgreSQL is down when the primary dies, so the gate must refuse (it cannot reach every
member a failover must survey) and repmgrd reruns its election ``election_rerun_interval`` later
and runs the gate again; the standby is started after the first veto. Printed: the time from a
vetoed gate run to the next, p50 and max, beside what repmgr's settings say it should be.

The timings are repmgrd's (``monitor_interval_secs / reconnect_attempts / reconnect_interval /
election_rerun_interval``): ``tuned`` 1/2/1/2 s (the tests'), ``--repmgr-defaults`` 2/6/10/15 s
(about a minute per failover and per veto), or any with ``--timings M,A,I,R``.

    python bench/repmgr_failover.py [--rounds 5] [--veto-rounds 2] [--repmgr-defaults | --timings 2,3,2,5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import pct  # noqa: E402
from tests.race import Writer, acked_write, create_ledger  # noqa: E402
from tests.repmgr import RepmgrCluster, Timings, build  # noqa: E402
from tests.repmgr_gated import Gated  # noqa: E402
from tests.servers import EtcdCluster  # noqa: E402

GIVE_UP = 180.0  # seconds without a writable new primary: reported as none
NAMES = ("pg0", "pg1", "pg2")


def measure(c: RepmgrCluster, killed: float) -> tuple[float, float] | None:
    """Seconds from ``killed`` until a standby left recovery, and until a commit on it returned."""
    deadline = killed + GIVE_UP
    while time.monotonic() < deadline:
        new = next((n for n in c.primaries() if n != "pg0"), None)
        if new is not None:
            promoted = time.monotonic() - killed
            attempt = 10**6
            while time.monotonic() < deadline:
                attempt += 1
                if acked_write(c.nodes[new].dsn, attempt, timeout=2.0):
                    return promoted, time.monotonic() - killed
                time.sleep(0.02)
            return None
        time.sleep(0.02)
    return None


def kill_under_writes(c: RepmgrCluster, stop_sidecar: Callable[[str], None] | None = None) -> float:
    """A second of acknowledged writes, then kill -9 of pg0 (PostgreSQL, repmgrd and its sidecar, if any)."""
    c.settle()
    create_ledger(c.nodes["pg0"].dsn)
    writer = Writer(c.nodes["pg0"].dsn)
    time.sleep(1.0)
    if stop_sidecar is not None:
        stop_sidecar("pg0")
    killed = c.kill("pg0")
    writer.halt()
    return killed


def alone(timings: Timings) -> tuple[float, float] | None:
    c = build(NAMES, timings=timings)
    try:
        return measure(c, kill_under_writes(c))
    finally:
        c.close()


def gated(etcd: EtcdCluster, timings: Timings) -> tuple[float, float] | None:
    g = Gated(etcd, "bench-" + uuid.uuid4().hex[:8], timings=timings)
    try:
        g.build(NAMES)
        g.wait("the rule in force", lambda: g.setting("pg0") == "ANY 1 (pg1, pg2)", 60)
        return measure(g.repmgr, kill_under_writes(g.repmgr, g.stop_sidecar))
    finally:
        g.close()


def veto_costs(etcd: EtcdCluster, timings: Timings) -> list[float]:
    """Seconds from each vetoed gate run's start to the next run's start (one standby down, then back)."""
    g = Gated(etcd, "bench-veto-" + uuid.uuid4().hex[:8], timings=timings)
    c = g.repmgr
    try:
        g.build(("pg0", "pg1", "pg2", "pg3"))
        g.wait("the rule in force", lambda: g.setting("pg0") == "ANY 1 (pg1, pg2, pg3)", 60)
        c.settle()
        g.stop_sidecar("pg3")
        c.stop_repmgrd("pg3")
        c.stop_postgres("pg3")
        g.stop_sidecar("pg0")
        c.kill("pg0")
        g.wait("a veto", lambda: any(x.status == 3 for x in g.gate_calls()), GIVE_UP)
        c.start_postgres("pg3")
        g.wait("an allowed gate run", lambda: any(x.status == 0 for x in g.gate_calls()), GIVE_UP)
        calls = g.gate_calls()
        return [b.started - a.started for a, b in zip(calls, calls[1:], strict=False) if a.status == 3]
    finally:
        g.close()


def show(mode: str, rounds: list[tuple[float, float] | None]) -> float | None:
    done = [r for r in rounds if r is not None]
    if not done:
        print(f"{mode:<10}{'-':>13}{'-':>13}{'-':>13}{'-':>13}  {len(rounds)} of {len(rounds)}")
        return None
    promoted, writable = [p for p, _ in done], [w for _, w in done]
    print(
        f"{mode:<10}{pct(promoted, 50):>12.2f}s{pct(promoted, 99):>12.2f}s{pct(writable, 50):>12.2f}s"
        f"{pct(writable, 99):>12.2f}s  {len(rounds) - len(done)} of {len(rounds)}"
    )
    return pct(writable, 50)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="kill -9 rounds per mode (a fresh cluster each)")
    ap.add_argument("--veto-rounds", type=int, default=2, help="clusters in which the gate vetoes (0: none)")
    ap.add_argument("--repmgr-defaults", action="store_true", help="repmgr's own timings instead of the tuned ones")
    ap.add_argument(
        "--timings",
        metavar="M,A,I,R",
        help="monitor_interval_secs, reconnect_attempts, reconnect_interval, election_rerun_interval (seconds)",
    )
    args = ap.parse_args()
    timings = Timings.repmgr_defaults() if args.repmgr_defaults else Timings()
    if args.timings:
        m, a, i, r = (int(x) for x in args.timings.split(","))
        timings = replace(
            timings, monitor_interval_secs=m, reconnect_attempts=a, reconnect_interval=i, election_rerun_interval=r
        )
    named = (
        f"monitor_interval_secs {timings.monitor_interval_secs}, reconnect_attempts {timings.reconnect_attempts}, "
        f"reconnect_interval {timings.reconnect_interval}, election_rerun_interval {timings.election_rerun_interval}"
    )
    etcd = EtcdCluster(3).start()
    results: dict[str, list[tuple[float, float] | None]] = {"alone": [], "pgcohort": []}
    costs: list[float] = []
    try:
        for n in range(args.rounds):
            for mode in results:  # interleaved, so that drift on the machine hits both modes alike
                got = alone(timings) if mode == "alone" else gated(etcd, timings)
                results[mode].append(got)
                shown = f"promoted {got[0]:6.2f} s   writable {got[1]:6.2f} s" if got else "no writable primary"
                print(f"round {n + 1} {mode:<9} {shown}", flush=True)
        for n in range(args.veto_rounds):
            got_costs = veto_costs(etcd, timings)
            costs += got_costs
            print(f"veto round {n + 1}: {', '.join(f'{x:.2f} s' for x in got_costs)}", flush=True)
    finally:
        etcd.close()
    print(f"\nkill -9 of the primary -> writable new primary, {args.rounds} rounds each ({named})")
    print(f"{'mode':<10}{'promoted p50':>13}{'p99':>13}{'writable p50':>13}{'p99':>13}  rounds without a primary")
    alone_p50, mine = show("alone", results["alone"]), show("pgcohort", results["pgcohort"])
    if alone_p50 is None or mine is None:
        print("pgcohort / alone: no ratio, a mode never produced a writable primary")
    else:
        ratio = mine / alone_p50
        print(
            f"pgcohort / alone writable p50 ratio {ratio:.3f} ({'meets' if ratio <= 1.1 else 'MISSES'} target <= 1.1x)"
        )
    expected = timings.election_rerun_interval + timings.detection()
    if costs:
        print(
            f"one veto costs p50 {pct(costs, 50):.2f} s, max {max(costs):.2f} s from a vetoed gate run to the next "
            f"({len(costs)} vetoes; election_rerun_interval + detection = {expected:.0f} s, plus the gate's run)"
        )
    else:
        print(f"one veto costs about {expected:.0f} s plus the gate's run (election_rerun_interval + detection; "
              "not measured: --veto-rounds 0)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
