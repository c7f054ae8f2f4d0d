"""The pgcohort demo on Patroni: real etcd, real Patroni 4.x, real PostgreSQL 15, real sidecars.

It starts, on loopback, the topology users deploy: a 3-member etcd and a Patroni cluster
(pg0, pg1 in zone-a; pg2 in zone-b) with one `pgcohort sidecar` per node and the gate as
Patroni's `pre_promote`. Then, every command run for real:

  1. adopt the cluster with one command; every node's view of the ruleset;
  2. a 4th node (pg3) streams but does not count until `pgcohort add`; then everyone sees it;
  3. pg2 goes down (Patroni, PostgreSQL and sidecar), misses two changes, and catches up;
  4. the seed's race: a write acknowledged only by pg3, pg3's Patroni hung, the primary
     killed; Patroni's own choices (pg1, pg2) are vetoed with their reason; pg3 is promoted
     when it returns, and every acknowledged write is counted on it;
  5. zones: with `cross-zone` a write waits for the other zone; the primary's whole zone is
     killed and the failover goes to the other zone with nothing lost;
  6. the audit trail: `pgcohort history` and `history --terms`.

It ends by printing how to look around. With --keep it stays up until Ctrl-C; otherwise it
cleans up.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.patroni import (  # noqa: E402  (the launcher the tests use; docker-compose.yml has the same topology)
    DEMO_NODES,
    DEMO_POLICY,
    DEMO_SCOPE,
    PATRONICTL,
    PGCOHORT,
    PatroniCluster,
)
from tests.race import acked_write, create_ledger, ledger_ids  # noqa: E402
from tests.servers import EtcdCluster  # noqa: E402

BOLD, DIM, END = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}# {text}{END}", flush=True)


def note(text: str) -> None:
    print(f"  {text}", flush=True)


class Demo:
    def __init__(self, pc: PatroniCluster) -> None:
        self.pc = pc
        self.acked: set[int] = set()
        self.next_id = 1
        self.seen_vetoes: set[str] = set()

    # --- showing ----------------------------------------------------------------------

    def run(self, *argv: str, node: str = "pg0") -> str:
        print(f"$ pgcohort {shlex.join(argv)}", flush=True)
        done = self.pc.pgcohort(*argv, node=node, check=False)
        out = (done.stdout + done.stderr).rstrip()
        if out:
            print(out, flush=True)
        if done.returncode:
            print(f"(exit code {done.returncode})", flush=True)
        return out

    def patronictl(self, *argv: str) -> None:
        print(f"$ patronictl {shlex.join(argv)}", flush=True)
        print(self.pc.patronictl(*argv, check=False).stdout.rstrip(), flush=True)

    def views(self) -> None:
        for name, a in sorted(self.pc.agents.items()):
            if a.sidecar is None or a.sidecar.proc is None or a.sidecar.proc.poll() is not None:
                note(f"{name}: (sidecar down)")
                continue
            try:
                _, body = a.sidecar.get("/ruleset")
                health, _ = a.sidecar.get("/health")
            except OSError:
                note(f"{name}: (sidecar not answering)")
                continue
            note(
                f"{name}: GET /ruleset -> revision {body.get('revision')} version {body.get('version')} "
                f"{body.get('phase')}, cohort {' '.join(body.get('cohort', []))}   /health {health}"
            )

    def member(self, name: str) -> bool:
        """Whether the committed ruleset counts ``name`` (read with `pgcohort status --json`)."""
        done = self.pc.pgcohort("status", "--json", check=False)
        doc = json.loads(done.stdout) if done.returncode == 0 else {}
        return any(r["member"] == name and r["cohort"] == "member" for r in doc.get("members", []))

    def setting(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.pc.agents[name].dsn, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute("SHOW synchronous_standby_names").fetchone()
            return str(row[0]) if row else ""

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 60.0, *, vetoes: bool = False) -> Any:
        """Wait with visible progress; with ``vetoes``, print each gate refusal from Patroni's logs as it happens."""
        started = time.monotonic()
        shown = 0
        print(f"  waiting for {what} ", end="", flush=True)
        while True:
            try:
                value = check()
            except Exception:  # noqa: BLE001 (a server restarting: keep waiting)
                value = None
            if value:
                print(f"done in {time.monotonic() - started:.1f} s", flush=True)
                return value
            if vetoes:
                for line in self.new_vetoes():
                    print(f"\n    {DIM}{line}{END}\n  waiting for {what} ", end="", flush=True)
            elapsed = int(time.monotonic() - started)
            if elapsed >= shown + 5:
                shown = elapsed - elapsed % 5
                print(f"{shown}s ", end="", flush=True)
            if time.monotonic() - started > timeout:
                print("", flush=True)
                raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.25)

    def new_vetoes(self) -> list[str]:
        out = []
        for name, a in sorted(self.pc.agents.items()):
            try:
                lines = a.log.splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith("pgcohort gate:") and line not in self.seen_vetoes:
                    self.seen_vetoes.add(line)
                    out.append(f"{name}'s pre_promote: {line[:220]}")
        return out

    # --- writing ------------------------------------------------------------------------

    def write(self, primary: str, n: int = 1, timeout: float = 5.0) -> int:
        done = 0
        for _ in range(n):
            if acked_write(self.pc.agents[primary].dsn, self.next_id, timeout=timeout):
                self.acked.add(self.next_id)
                done += 1
            self.next_id += 1
        return done

    def check_writes(self, primary: str) -> None:
        present = ledger_ids(self.pc.agents[primary].dsn)
        lost = self.acked - present
        note(
            f"on the new primary {primary}: {len(self.acked)} acknowledged writes, {len(self.acked & present)} present, {len(lost)} lost"
        )
        if lost:
            raise SystemExit(f"demo: acknowledged writes lost: {sorted(lost)[:10]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="leave everything running at the end (until Ctrl-C)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("the demo starts Patroni and PostgreSQL as the postgres user: run it as root", file=sys.stderr)
        return 2
    say("Starting a 3-member etcd and a Patroni cluster: pg0, pg1 (zone-a) and pg2 (zone-b)")
    etcd = EtcdCluster(3).start()
    pc = PatroniCluster(etcd, DEMO_SCOPE, actor="sre@demo")
    demo = Demo(pc)
    try:
        for name, zone in DEMO_NODES:
            pc.add(name, zone, sidecar=False)
            if name == "pg0":
                demo.wait("pg0 to bootstrap and lead", lambda: pc.leader() == "pg0", 90)
        demo.wait("pg1 and pg2 streaming", lambda: pc.streaming(["pg1", "pg2"]), 90)
        for a in pc.agents.values():
            pc.start_sidecar(a)
        note(f"each node: Patroni ({PATRONICTL.rsplit('/', 2)[0]}), PostgreSQL 15, a pgcohort sidecar; "
             f"pre_promote: {PGCOHORT} gate --config <node>/pgcohort.yml")  # fmt: skip
        demo.patronictl("-c", os.path.join(pc.agents["pg0"].conf_dir, "00-patroni.yml"), "list")

        # 1 ---------------------------------------------------------------------------------
        say("1. Adopt the cluster: members and leader from Patroni, the setting into Patroni's config, one transaction")
        demo.run("init", "--from-patroni", pc.agents["pg0"].api, "--policy", DEMO_POLICY)
        demo.wait("the primary enforcing it", lambda: demo.setting("pg0") == "ANY 1 (pg1, pg2)", 30)
        time.sleep(1.0)
        note("every node's view of the ruleset:")
        demo.views()

        # 2 ---------------------------------------------------------------------------------
        say("2. Scale 3 -> 4: pg3 (zone-b) joins Patroni and streams, but it does not count yet")
        d = pc.add("pg3", "zone-b")
        demo.wait("pg3 streaming", lambda: pc.streaming(["pg3"]), 90)
        demo.wait(
            "pg3's sidecar to tag it nofailover", lambda: d.get("/patroni")[1].get("tags", {}).get("nofailover"), 30
        )
        note(f"pg3 tags in Patroni: {d.get('/patroni')[1].get('tags')}  (not a member: it cannot win the leader race)")
        note(f"the primary's setting is still {demo.setting('pg0')!r}")
        say("   Admit pg3 with one command: a compare-and-swap on the ruleset revision")
        demo.run("add", f"pg3@127.0.0.1:{d.pg_port}/zone-b")
        demo.wait(
            "apply, barrier, finalize", lambda: demo.setting("pg0") == "ANY 1 (pg1, pg2, pg3)" and _stable(demo), 30
        )
        time.sleep(1.0)
        note("every node sees the same membership:")
        demo.views()

        # 3 ---------------------------------------------------------------------------------
        say("3. pg2 goes down (its sidecar, Patroni and PostgreSQL) and misses two changes")
        c = pc.agents["pg2"]
        assert c.sidecar is not None
        note(f"pg2 last saw revision {c.sidecar.get('/ruleset')[1].get('revision')}")
        assert c.sidecar is not None and c.proc is not None
        c.sidecar.signal(signal.SIGTERM)  # what `systemctl stop`, a restart or an image upgrade sends
        c.sidecar.wait_exit(30)
        still = "still a member" if demo.member("pg2") else "NO LONGER A MEMBER"
        note(f"pg2's sidecar stopped with SIGTERM: pg2 is {still} (a restart never shrinks the rule; "
             "`pgcohort leave` scales down)")  # fmt: skip
        c.proc.send_signal(signal.SIGTERM)  # Patroni stops its PostgreSQL on the way out
        demo.wait(
            "pg2 to stop", lambda: c.proc is not None and c.proc.poll() is not None and c.postmaster_pid() is None
        )
        demo.run("policy", "any 2")
        demo.wait("finalized", lambda: _stable(demo), 30)
        demo.run("policy", "any 1")
        demo.wait("finalized", lambda: _stable(demo), 30)
        demo.views()
        say("   pg2 comes back: its sidecar reads the committed ruleset and catches up")
        pc.start_agent(c)
        pc.start_sidecar(c)
        demo.wait("pg2 streaming again", lambda: pc.streaming(["pg2"]), 90)
        time.sleep(1.0)
        demo.views()

        # 4 ---------------------------------------------------------------------------------
        say("4. The seed's race: a write acknowledged with the newest member's help, then the primary dies")
        create_ledger(pc.agents["pg0"].dsn)
        demo.write("pg0", 20)
        note(f"{len(demo.acked)} writes acknowledged under ANY 1 (pg1, pg2, pg3)")
        receivers = {n: pc.wal_receiver(n) for n in ("pg1", "pg2")}
        for pid in receivers.values():
            os.kill(pid or 0, signal.SIGSTOP)
        note("pg1's and pg2's WAL receivers paused: the next write is acknowledged by pg3 alone")
        demo.write("pg0", 1, timeout=10)
        note(f"write {demo.next_id - 1} acknowledged (by pg3 only)")
        pc.pause_agent("pg3")
        note("pg3's Patroni agent hangs (SIGSTOP); its PostgreSQL keeps running")
        pc.kill("pg0")
        for pid in receivers.values():
            os.kill(pid or 0, signal.SIGKILL)
        note("pg0 killed (Patroni and PostgreSQL, kill -9); pg1's and pg2's in-flight WAL is lost")
        note("Patroni alone would now promote pg1 or pg2 after its ttl and lose that write "
             "(tests/test_patroni_race.py shows it); with the gate as pre_promote:")  # fmt: skip
        time.sleep(pc.ttl * 1.5)
        for line in demo.new_vetoes():
            note(f"{DIM}{line}{END}")
        assert pc.leader() is None, "someone was promoted"
        note("nobody was promoted: Patroni's candidates were vetoed, with the reason")
        say("   pg3's agent resumes: the gate allows pg3 (the most advanced) and records term 2")
        pc.resume_agent("pg3")
        demo.wait("a new primary", lambda: pc.leader() == "pg3", 90, vetoes=True)
        demo.check_writes("pg3")
        say("   pg0 rejoins as a standby (Patroni rewinds it); everyone follows pg3")
        pc.start_agent(pc.agents["pg0"])
        demo.wait("pg0, pg1, pg2 streaming from pg3", lambda: pc.streaming(["pg0", "pg1", "pg2"]), 120)
        demo.wait("the rule for pg3 in force", lambda: demo.setting("pg3") == "ANY 1 (pg0, pg1, pg2)", 30)

        # 5 ---------------------------------------------------------------------------------
        say("5. Zones: every commit must reach the other zone (cross-zone)")
        demo.run("policy", "cross-zone")
        demo.wait("finalized", lambda: demo.setting("pg3") == "ANY 1 (pg0, pg1)" and _stable(demo), 30)
        note(f"primary pg3 is in zone-b; synchronous_standby_names = {demo.setting('pg3')!r} (zone-a only)")
        zone_a = [pc.wal_receiver(n) for n in ("pg0", "pg1")]
        for pid in zone_a:
            os.kill(pid or 0, signal.SIGSTOP)
        waited = not acked_write(pc.agents["pg3"].dsn, 10**6, timeout=2.0)
        note(f"zone-a's receivers paused: a commit {'waits' if waited else 'DID NOT WAIT'} (2 s, not acknowledged)")
        for pid in zone_a:
            os.kill(pid or 0, signal.SIGCONT)
        demo.write("pg3", 20)
        note(f"zone-a resumed; {len(demo.acked)} writes acknowledged so far")
        say("   The primary's whole zone dies: pg2 and pg3 (zone-b) killed")
        pc.kill("pg3")
        pc.kill("pg2")
        new = demo.wait("a primary in zone-a", lambda: pc.leader() in ("pg0", "pg1") and pc.leader(), 120, vetoes=True)
        demo.check_writes(new)
        note(f"{new} now enforces {demo.setting(new)!r}: under cross-zone its commits wait until zone-b is back")

        # 6 ---------------------------------------------------------------------------------
        say("6. The audit trail: every ruleset version and every failover term")
        demo.run("history")
        demo.run("history", "--terms")

        say("Look around")
        conf = pc.agents["pg0"].pgcohort_config
        note(f"{PGCOHORT} status --config {conf}")
        for name, a in sorted(pc.agents.items()):
            if a.sidecar is not None and a.sidecar.proc is not None and a.sidecar.proc.poll() is None:
                note(f"curl {a.sidecar.url}/metrics     ({name}'s sidecar; /health, /ruleset too)")
        note(f"{PATRONICTL} -c {os.path.join(pc.agents['pg0'].conf_dir, '00-patroni.yml')} list")
        note(f"Patroni's logs: {pc.root}/<node>/patroni.log")
        if args.keep:
            note(f"everything stays up; stop it with Ctrl-C here (or kill {os.getpid()})")
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        else:
            note("(run with --keep to leave it running)")
        return 0
    finally:
        pc.close()
        etcd.close()
        print("\ndemo stopped: Patroni, PostgreSQL, sidecars and etcd removed.", flush=True)


def _stable(demo: Demo) -> bool:
    return '"phase": "stable"' in demo.pc.pgcohort("status", "--json", node="pg1", check=False).stdout


if __name__ == "__main__":
    sys.exit(main())
