"""bench/apply: from `pgcohort add` to the primary enforcing the new setting; sidecar idle cost.

Starts the native stack (3-member etcd, a PostgreSQL 15 primary with 3 streaming
standbys plus a fourth standby outside the cohort, one sidecar per node with production
timers: 1 s interval, 10 s lease). Each round proposes `add pg4` through the same call the
command makes (read, validate, CAS) and times, from that call, until the primary enforces
the setting that includes pg4 (its sessions show it and pg4's WAL sender reports
`quorum`), and until the change is finalized after the barrier. Then pg4 is removed again.
A bare etcd CAS on the same cluster, interleaved, is printed beside it. Afterwards the
sidecars idle for a while and their RSS and CPU are read from /proc.

    python bench/apply.py [--rounds 50] [--idle 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402

from bench.common import BareCas, ms, pct  # noqa: E402
from pgcohort import protocol  # noqa: E402
from pgcohort.core import ruleset as core  # noqa: E402
from tests.stack import BIN, Stack  # noqa: E402


class Enforcement:
    """Polls the primary on one session until it enforces ``expected`` for ``member``."""

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
        raise TimeoutError(f"primary did not enforce {expected!r}")


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle to measure CPU over")
    args = ap.parse_args()

    st = Stack(extra_env={"PGCOHORT_SIDECAR_INTERVAL": "1", "PGCOHORT_SIDECAR_TTL": "10"})
    try:
        st.start(standbys=3)
        st.pg.add_standby("pg4", "pg0")
        st.start_sidecar("pg4")
        store = st.store()
        st.wait("initial apply", lambda: st.primary_setting() == "ANY 1 (pg1, pg2, pg3)")
        probe = Enforcement(st.pg.nodes["pg0"].dsn)
        baseline = BareCas(st.etcd_cluster.leader().client_port)
        enforce, finalized = [], []
        wide = "ANY 1 (pg1, pg2, pg3, pg4)"
        for _ in range(args.rounds):
            baseline.once()

            t0 = time.monotonic()
            protocol.propose(store, core.AddMember(st.member("pg4")), actor="bench")
            enforce.append(probe.wait(wide, "pg4") - t0)
            st.wait("finalize", lambda: store.read().ruleset.phase == "stable", interval=0.002)
            finalized.append(time.monotonic() - t0)
            protocol.propose(store, core.RemoveMember("pg4"), actor="bench")
            st.wait("finalize", lambda: store.read().ruleset.phase == "stable", interval=0.002)
        cli = []
        env = st.sidecars["pg1"].env
        for _ in range(3):
            t0 = time.monotonic()
            subprocess.run([BIN, "status", "--json"], env=env, capture_output=True, check=True)
            cli.append(time.monotonic() - t0)

        print(f"bench/apply: 3-member etcd, PostgreSQL 15 primary + 4 standbys, 5 sidecars, {args.rounds} adds")
        bare = baseline.samples
        print(f"  bare etcd CAS txn                       p50 {ms(pct(bare, 50))}  p99 {ms(pct(bare, 99))}")
        print(
            f"  add -> primary enforces the new setting p50 {ms(pct(enforce, 50))}  p99 {ms(pct(enforce, 99))}  (target p50 <= 50 ms)"
        )
        print(f"  add -> finalized after the barrier      p50 {ms(pct(finalized, 50))}  p99 {ms(pct(finalized, 99))}")
        print(
            f"  (a `pgcohort` process itself starts in  p50 {ms(pct(cli, 50))}: interpreter and imports, not protocol)"
        )

        time.sleep(2)
        before = {n: proc_stats(c.proc.pid) for n, c in st.sidecars.items() if c.proc}
        time.sleep(args.idle)
        after = {n: proc_stats(c.proc.pid) for n, c in st.sidecars.items() if c.proc}
        for name in ("pg0", "pg1"):
            cpu = (after[name][0] - before[name][0]) / args.idle * 100
            print(
                f"  idle sidecar {name} ({'primary' if name == 'pg0' else 'standby'}): RSS {after[name][1] / 2**20:5.1f} MB "
                f"(target <= 60 MB), CPU {cpu:4.2f}% of a core over {args.idle:g}s (target <= 1%)"
            )
        probe.conn.close()
        return 0
    finally:
        st.close()


if __name__ == "__main__":
    sys.exit(main())
