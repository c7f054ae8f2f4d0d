"""The pgcohort demo: a real 3-member etcd on loopback, then the CLI, step by step.

Every command shown is run for real; a `pgcohort watch` in the background prints each
committed ruleset as it arrives. With a terminal attached, the cluster stays up afterwards
for you to try commands; without one (or with --no-wait) it stops at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.servers import EtcdCluster  # noqa: E402  (the same launcher the tests use)

BIN = os.path.join(os.path.dirname(sys.executable), "pgcohort")


def say(text: str) -> None:
    print(f"\n\033[1m# {text}\033[0m", flush=True)


def run(env: dict[str, str], *args: str) -> int:
    print(f"$ pgcohort {shlex.join(args)}", flush=True)
    rc = subprocess.run([BIN, *args], env=env).returncode
    if rc:
        print(f"(exit code {rc})", flush=True)
    return rc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-wait", action="store_true", help="stop everything at the end of the walkthrough")
    args = p.parse_args()

    say("Starting a 3-member etcd cluster (Debian etcd 3.4) on free loopback ports")
    etcd = EtcdCluster(3).start()
    env = dict(
        os.environ, PGCOHORT_CLUSTER="demo", PGCOHORT_ETCD_ENDPOINTS=",".join(etcd.endpoints), PGCOHORT_ACTOR="demo"
    )
    print(f"PGCOHORT_ETCD_ENDPOINTS={env['PGCOHORT_ETCD_ENDPOINTS']}  PGCOHORT_CLUSTER=demo")
    watcher = subprocess.Popen([BIN, "watch"], env=env, stdout=subprocess.PIPE, text=True)

    def relay() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            print(f"    [watch] {line.rstrip()}", flush=True)

    threading.Thread(target=relay, daemon=True).start()
    try:
        say("Create the ruleset: three members in two zones, one standby ack makes a write durable")
        run(env, "init", "--member", "pg0@127.0.0.1:5432/zone-a", "--member", "pg1@127.0.0.1:5433/zone-a",
            "--member", "pg2@127.0.0.1:5434/zone-b", "--primary", "pg0", "--policy", "any 1")  # fmt: skip
        run(env, "status")
        say("Add a fourth member with one command: a compare-and-swap on the ruleset revision")
        run(env, "add", "pg3@127.0.0.1:5435/zone-b")
        say("Joint phase: until it is finalized, every failover must satisfy both rules")
        run(env, "status")
        say("A second change is refused while one is in flight (exit code 3, nothing written)")
        run(env, "remove", "pg1")
        say("Bad input is refused before anything is written (exit code 2)")
        run(env, "add", "bad name")
        say("Finalize. The sidecar beside the primary does this after its barrier; by hand it names the risk")
        run(env, "finalize", "--without-barrier")
        say("Raise the durability policy to two acks, then finalize")
        run(env, "policy", "any 2")
        run(env, "finalize", "--without-barrier")
        time.sleep(0.3)
        say("Kill one etcd member: the watcher moves to another member and misses nothing")
        etcd.kill(etcd.members[0])
        run(env, "remove", "pg1")
        run(env, "finalize", "--without-barrier")
        time.sleep(0.5)
        say("Every committed version, written in the same transaction as the ruleset")
        run(env, "history")
        run(env, "status")
        etcd.restart(etcd.members[0])
        if not args.no_wait and sys.stdin.isatty():
            say("The cluster stays up. In another shell:")
            print(f"  export PGCOHORT_CLUSTER=demo PGCOHORT_ETCD_ENDPOINTS={env['PGCOHORT_ETCD_ENDPOINTS']}")
            print(f"  {BIN} status     (Ctrl-C here stops the demo)")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        watcher.terminate()
        watcher.wait()
        etcd.close()
        print("\ndemo stopped; etcd removed.")


if __name__ == "__main__":
    sys.exit(main())
