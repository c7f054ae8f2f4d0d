"""The pgcohort demo: real etcd, real PostgreSQL 15, real sidecars, the CLI step by step.

It starts a 3-member etcd, a PostgreSQL primary with three streaming standbys and one
`pgcohort sidecar` per node, all on loopback. Then it adds a fourth standby to the cohort
with one command and shows that every node sees the same membership, raises the policy,
and scales down by stopping a sidecar (SIGTERM: it removes its member first). Every
command shown is run for real. With a terminal attached the cluster stays up afterwards
for you to try commands; without one (or with --no-wait) it stops at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.stack import BIN, Stack, http_get  # noqa: E402  (the same launcher the tests use)


def say(text: str) -> None:
    print(f"\n\033[1m# {text}\033[0m", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-wait", action="store_true", help="stop everything at the end of the walkthrough")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("the demo starts PostgreSQL as the postgres user: run it as root (or with sudo)", file=sys.stderr)
        return 2

    st = Stack(cluster="demo")
    say("Starting a 3-member etcd, a PostgreSQL 15 primary pg0 and standbys pg1-pg3 on loopback")
    st.start(standbys=3, sidecars=False, init=False)
    env = {
        **os.environ,
        "PGCOHORT_CLUSTER": "demo",
        "PGCOHORT_ETCD_ENDPOINTS": ",".join(st.etcd.endpoints),
        "PGCOHORT_ACTOR": "demo",
    }

    def run(*argv: str) -> int:
        print(f"$ pgcohort {shlex.join(argv)}", flush=True)
        rc = subprocess.run([BIN, *argv], env=env).returncode
        if rc:
            print(f"(exit code {rc})", flush=True)
        return rc

    def every_node() -> None:
        for name, car in st.sidecars.items():
            code, body = car.get("/ruleset")
            health, _ = car.get("/health")
            print(
                f"  {name}: GET /ruleset -> revision {body.get('revision')} cohort {' '.join(body.get('cohort', []))}   /health {health}"
            )

    def setting() -> None:
        print(f"  primary pg0: synchronous_standby_names = {st.primary_setting()!r}")

    try:
        say("Create the ruleset: four members in two zones, one standby ack makes a write durable")
        specs = [f"{n}@127.0.0.1:{st.pg.nodes[n].port}/{st.member(n).zone}" for n in ("pg0", "pg1", "pg2", "pg3")]
        run("init", *[a for s in specs for a in ("--member", s)], "--primary", "pg0", "--policy", "any 1")
        say("Start one sidecar per node; the primary's sidecar applies the committed rule")
        for name in list(st.pg.nodes):
            st.start_sidecar(name)
        st.wait("the setting", lambda: st.primary_setting() == "ANY 1 (pg1, pg2, pg3)")
        time.sleep(0.6)
        setting()
        run("status")

        say("Scale 3 -> 4 replicas: a new standby pg4 starts streaming; it does not count yet")
        st.pg.add_standby("pg4", "pg0")
        st.start_sidecar("pg4")
        time.sleep(1.2)
        run("status")
        setting()

        say("Admit pg4 with one command: a compare-and-swap on the ruleset revision")
        run("add", f"pg4@127.0.0.1:{st.pg.nodes['pg4'].port}/zone-b")
        st.wait("the add to be finalized", lambda: st.store().read().ruleset.phase == "stable")
        setting()
        say("Every node sees the same membership (each sidecar's own view)")
        time.sleep(0.3)
        every_node()

        say("Raise the durability policy to two acks; the primary's sidecar applies it, then a barrier, then finalize")
        run("policy", "any 2")
        st.wait("finalize", lambda: st.store().read().ruleset.phase == "stable")
        setting()

        say("Scale down: stop pg3's sidecar with SIGTERM; it removes pg3 through the protocol first")
        car = st.sidecars.pop("pg3")
        car.signal(signal.SIGTERM)
        car.wait_exit(60)
        print("  " + next(line for line in car.log.splitlines() if "SIGTERM" in line))
        setting()
        run("history")
        run("status")

        say("Each sidecar serves /health, /ruleset and /metrics (Prometheus)")
        metrics = http_get(st.sidecars["pg0"].url + "/metrics")[1]
        for line in metrics.splitlines():
            if line.startswith(
                (
                    "pgcohort_ruleset_version",
                    "pgcohort_cohort_size",
                    "pgcohort_required_acks",
                    "pgcohort_applied_revision",
                    'pgcohort_changes_total{result="finalized"}',
                )
            ):
                print("  " + line)
        if not args.no_wait and sys.stdin.isatty():
            say("The cluster stays up. In another shell:")
            print(f"  export PGCOHORT_CLUSTER=demo PGCOHORT_ETCD_ENDPOINTS={env['PGCOHORT_ETCD_ENDPOINTS']}")
            print(f"  {BIN} status      curl {st.sidecars['pg0'].url}/health      (Ctrl-C here stops the demo)")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        st.close()
        print("\ndemo stopped; etcd, PostgreSQL and sidecars removed.")


if __name__ == "__main__":
    sys.exit(main())
