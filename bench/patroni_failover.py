"""bench/patroni_failover: kill -9 of the primary to a new primary accepting writes, three ways.

A fresh 3-node Patroni 4.x cluster (real etcd, ttl 20, loop_wait 2, retry_timeout 5) per
round, in each mode:

* ``alone``   -- ``synchronous_mode: off`` and no pgcohort (asynchronous failover rules);
* ``quorum``  -- Patroni's own ``synchronous_mode: quorum`` (``synchronous_node_count: 1``);
* ``pgcohort`` -- ``synchronous_mode: off``, the setting owned by pgcohort through Patroni's
  config, a sidecar per node and the gate as ``pre_promote``.

A writer commits rows on the primary (``synchronous_commit = on``) until the kill. Measured
from the kill: **promoted** (the new leader's PostgreSQL leaves recovery) and **writable**
(its first commit returns; with a synchronous rule that needs the surviving standby to
stream from it). Printed per mode: median and max over the rounds, and the ratios of
pgcohort to each of the others from this one run. The target is pgcohort <= 1.1x either.

    python bench/patroni_failover.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.patroni import PatroniCluster  # noqa: E402
from tests.race import acked_write, create_ledger  # noqa: E402
from tests.servers import EtcdCluster  # noqa: E402

MODES = ("alone", "quorum", "pgcohort")


GIVE_UP = 120.0  # seconds without a writable new primary: reported as none


def one_round(etcd: EtcdCluster, mode: str, n: int) -> tuple[float, float] | None:
    pc = PatroniCluster(
        etcd,
        f"bench-{mode}-{n}-{time.monotonic_ns() % 10**6}",
        gate=mode == "pgcohort",
        synchronous_mode="quorum" if mode == "quorum" else "off",
    )
    try:
        for i, name in enumerate(("pg0", "pg1", "pg2")):
            pc.add(name, "zone-a" if i < 2 else "zone-b", sidecar=False)
            if i == 0:
                pc.wait_leader()
        leader = pc.wait_leader()
        others = [x for x in ("pg0", "pg1", "pg2") if x != leader]
        pc.wait_streaming(others)
        if mode == "pgcohort":
            for a in pc.agents.values():
                pc.start_sidecar(a)
            pc.pgcohort("init", "--from-patroni", pc.agents[leader].api)
        dsn = pc.agents[leader].dsn
        pc.wait("a synchronous commit", lambda: _sync_setting(dsn) or mode == "alone", 60)
        create_ledger(dsn)
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                acked_write(dsn, i, timeout=1.0)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(1.0)
        killed = time.monotonic()
        pc.kill(leader)
        stop.set()
        try:
            new = pc.wait_leader(GIVE_UP, not_=leader)
            promoted = time.monotonic() - killed
            new_dsn = pc.agents[new].dsn
            left = max(1.0, GIVE_UP - promoted)
            pc.wait("a commit on the new primary", lambda: acked_write(new_dsn, 10**6 + n, timeout=2.0), left, 0.05)
        except AssertionError:
            return None
        writable = time.monotonic() - killed
        return promoted, writable
    finally:
        pc.close()


def _sync_setting(dsn: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW synchronous_standby_names").fetchone()
        return bool(row and row[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    etcd = EtcdCluster(3).start()
    results: dict[str, list[tuple[float, float] | None]] = {m: [] for m in MODES}
    try:
        for n in range(args.rounds):
            for mode in MODES:  # interleaved, so that drift on the machine hits every mode alike
                got = one_round(etcd, mode, n)
                results[mode].append(got)
                shown = (
                    f"promoted {got[0]:6.2f} s   writable {got[1]:6.2f} s"
                    if got
                    else f"no writable primary in {GIVE_UP:.0f} s"
                )
                print(f"round {n + 1} {mode:<9} {shown}", flush=True)
    finally:
        etcd.close()
    print(f"\nkill -9 of the primary -> new primary, {args.rounds} rounds each (ttl 20, loop_wait 2, retry_timeout 5)")
    print(f"{'mode':<10}{'promoted p50':>14}{'writable p50':>15}{'max':>8}  rounds without a primary")
    med: dict[str, float | None] = {}
    for m, rounds in results.items():
        done = [r for r in rounds if r is not None]
        if not done:
            med[m] = None
            print(f"{m:<10}{'-':>14}{'-':>15}{'-':>8}  {len(rounds)} of {len(rounds)}")
            continue
        med[m] = statistics.median(w for _, w in done)
        print(
            f"{m:<10}{statistics.median(p for p, _ in done):>13.2f}s{med[m]:>14.2f}s"
            f"{max(w for _, w in done):>7.2f}s  {len(rounds) - len(done)} of {len(rounds)}"
        )
    mine = med["pgcohort"]
    for other in ("alone", "quorum"):
        theirs = med[other]
        if mine is None or theirs is None:
            print(f"pgcohort / {other:<7} no ratio: a mode never produced a writable primary in {GIVE_UP:.0f} s")
            continue
        ratio = mine / theirs
        print(
            f"pgcohort / {other:<7} writable p50 ratio {ratio:.3f}  ({'meets' if ratio <= 1.1 else 'MISSES'} <= 1.1x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
