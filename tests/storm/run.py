"""One schedule on one setup: a fresh cluster, three writers, the faults, the heal, the final read, the report.

Every schedule gets a fresh network, a fresh 3-member etcd and a fresh 4-node Patroni cluster
(pg0, pg1 in zone-a; pg2, pg3 in zone-b), so a result depends on its seed and its setup only,
never on what an earlier schedule left behind. The cohort starts as pg0, pg1, pg2 (pg3 is a
spare that a ``member-add`` brings in), under one durability rule per setup (:data:`SETUPS`):

* ``off``        Patroni, ``synchronous_mode: off``, ``synchronous_standby_names: ANY 1 (pg0, pg1, pg2)``
  passed through its dynamic configuration (the naive setup: any replica may be promoted);
* ``quorum``     Patroni's ``synchronous_mode: quorum`` (``synchronous_node_count: 1``; pg3 tagged
  ``nosync`` until it is added), Patroni's defaults otherwise (not strict);
* ``quorum-strict`` the same with ``synchronous_mode_strict: true`` (not in the default table);
* ``pgcohort``   Patroni with pgcohort ``any 1`` (adopted with ``init --from-patroni``, the gate as
  ``pre_promote``, a sidecar per node; pg3 joins the cluster after the adoption);
* ``cross-zone`` the same with the ``cross-zone`` policy.

The schedule's clock starts with the writers. At ``schedule.length`` every fault still in
force is undone and everything is healed (partitions, paused processes, dead agents, etcd
members and sidecars); the writers carry on until a primary has taken acknowledged writes
for ``settle`` seconds (or ``recover`` seconds passed), then stop, and the ledger is read on
the primary Patroni names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg
import yaml

from tests.patroni import PATRONICTL, PGCOHORT, Agent, PatroniCluster
from tests.pg import kill_postmaster
from tests.servers import EtcdCluster
from tests.storm import checker
from tests.storm.clients import History, Writer, create_ledger, read_ledger
from tests.storm.nemesis import ETCD, Log, Partitions, Stopped, etcd_member, run_quietly
from tests.storm.schedule import Event, Schedule

NODES = (("pg0", "zone-a"), ("pg1", "zone-a"), ("pg2", "zone-b"), ("pg3", "zone-b"))
COHORT = ("pg0", "pg1", "pg2")  # the initial members; pg3 is the spare
FAST_STREAMS = {"wal_sender_timeout": "5s", "wal_receiver_timeout": "5s"}  # a hung stream noticed in seconds
TAGS = "zz-storm-tags.yml"  # the quorum setup's nosync tag, as a drop-in beside Patroni's file


@dataclass(frozen=True)
class Setup:
    """A way to run Patroni: its synchronous mode, and pgcohort's policy where pgcohort owns the setting."""

    name: str
    synchronous_mode: str = "off"
    strict: bool = False
    policy: str | None = None  # pgcohort's; None: no pgcohort (no sidecars, no gate)

    @property
    def gated(self) -> bool:
        return self.policy is not None


SETUPS = {
    s.name: s
    for s in (
        Setup("off"),
        Setup("quorum", "quorum"),
        Setup("quorum-strict", "quorum", strict=True),
        Setup("pgcohort", policy="any 1"),
        Setup("cross-zone", policy="cross-zone"),
    )
}


class StormCluster(PatroniCluster):
    """A :class:`PatroniCluster` that can bootstrap with ``synchronous_mode_strict``, and whose gate lets Patroni
    promote until the adoption (``gate.unmanaged: allow``, docs/patroni.md): a leader lost while the cluster is
    built (a loaded machine) is replaced, instead of every candidate being vetoed before ``init`` ever ran.
    Once adopted, the marker in Patroni's configuration makes the gate decide by the rules."""

    strict: bool = False

    def patroni_config(self, a: Agent) -> dict[str, Any]:
        doc = super().patroni_config(a)
        if self.strict:
            doc["bootstrap"]["dcs"]["synchronous_mode_strict"] = True
        return doc

    def pgcohort_config(self, a: Agent) -> dict[str, Any]:
        doc = super().pgcohort_config(a)
        doc["gate"] = {"unmanaged": "allow"}
        return doc


# Lines of a Patroni log that say why a node did or did not take the leader key (and the gate's verdicts).
DECISIONS = re.compile(
    r"promoted self to leader|Got quorum vote|Quorum requirement|is still alive|Wal position of .* is ahead"
    r"|Ignoring the former leader|Demoting self|pgcohort gate:|failed to acquire|not healthy enough"
)


@dataclass
class Result:
    """One schedule on one setup: what happened, what the clients saw, and the checker's verdict."""

    setup: str
    schedule: Schedule
    history: checker.History
    report: checker.Report
    actions: list[str]
    leaders: list[str]
    build_seconds: float
    recovery_seconds: float | None  # from the heal to a primary taking writes; None: none within the bound
    total_seconds: float
    notes: list[str] = field(default_factory=list)
    reuse_seconds: float | None = None  # measure_reuse: from the heal until all four nodes stream again
    decisions: list[str] = field(default_factory=list)  # the leader races, per node from its log (DECISIONS)

    def summary(self) -> str:
        r = self.report
        sb = f", split brain: {len(r.split_brain)}" if r.split_brain else ""
        read = f"read on {self.history.read_from}" if r.final_read else "NO FINAL READ (no primary)"
        return (
            f"{self.setup:<11} seed {self.schedule.seed:>4}: {r.attempted:>5} writes, {r.acknowledged:>5} acked, "
            f"lost {len(r.lost)}, unexpected {len(r.unexpected)}, recovered {len(r.recovered)}, "
            f"availability {r.availability:6.1%}, {r.unavailable:5.1f}s unwritable{sb}; {read}; "
            f"{self.total_seconds:.0f}s"
        )


class Observer:
    """Polls Patroni's ``/cluster`` every half second (from whichever agent answers) for the leader."""

    def __init__(self, pc: PatroniCluster, log: Log) -> None:
        self.pc, self.log = pc, log
        self.leader: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="observer", daemon=True)

    def start(self) -> Observer:
        self.thread.start()
        return self

    def _run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            names = list(self.pc.agents)
            for k in range(len(names)):
                a = self.pc.agents[names[(turn + k) % len(names)]]
                try:
                    _, got = a.get("/cluster", timeout=1.0)
                except Exception:  # noqa: BLE001 (a hung, dead or half-answering agent: ask the next one)
                    continue
                if not isinstance(got, dict):
                    continue
                lead = next((m["name"] for m in got.get("members", []) if m.get("role") == "leader"), None)
                if lead != self.leader:
                    self.leader = lead
                    self.log(f"Patroni's leader: {lead or 'none'}")
                break
            turn += 1
            self.stop.wait(0.5)


class Storm:
    """A live cluster of one setup and the nemesis that plays a schedule against it."""

    def __init__(self, setup: Setup, schedule: Schedule) -> None:
        self.setup, self.schedule = setup, schedule
        self.notes: list[str] = []
        self.net = Partitions(tcp_syn_retries=2)
        self.etcd: EtcdCluster | None = None
        self.pc: StormCluster | None = None
        self.history = History()
        self.log = Log(self.history.now)
        self.observer: Observer | None = None
        self.writers: list[Writer] = []
        self.undo: dict[int, Callable[[], None]] = {}
        self.down: dict[str, int] = {}  # resource -> faults holding it down (kill, pause)
        self.stopped: dict[str, Stopped] = {}
        self.background: list[threading.Thread] = []
        self.first = "pg0"  # the primary when the schedule starts
        self.policy_k = 1  # off and quorum: the acknowledgements asked for
        self.ssn_members = list(COHORT)  # off: the passed-through list

    # --- building ---------------------------------------------------------------------------

    def build(self) -> None:
        """Start etcd and the four nodes of this setup, and wait until the first durability rule is in force."""
        self.etcd = EtcdCluster(3, host=self.net.etcd_address).start()
        setup = self.setup
        params = dict(FAST_STREAMS)
        if setup.name == "off":
            params["synchronous_standby_names"] = self._ssn()
        scope = f"storm-{setup.name}-{self.schedule.seed}-{time.monotonic_ns() % 10**6}"
        pc = StormCluster(self.etcd, scope, network=self.net, gate=setup.gated,
                          synchronous_mode=setup.synchronous_mode, dcs_parameters=params)  # fmt: skip
        pc.strict = setup.strict
        self.pc = pc
        pc.add("pg0", "zone-a", sidecar=False)
        pc.wait_leader(60)
        later = ["pg1", "pg2"] if setup.gated else ["pg1", "pg2", "pg3"]
        for name, zone in NODES:
            if name in later:
                pc.add(name, zone, start=False, sidecar=False)
                if setup.synchronous_mode == "quorum" and name == "pg3":
                    self._drop_in(pc.agents[name], {"tags": {"nosync": True}})
                pc.start_agent(pc.agents[name])
        pc.wait_streaming(later, 90)
        if setup.gated:
            for name in ("pg0", "pg1", "pg2"):
                pc.start_sidecar(pc.agents[name])
            self.notes.append(self._adopt(str(setup.policy)))
            pc.add("pg3", "zone-b")
            pc.wait_streaming(["pg3"], 90)
            root = f"/pgcohort/{scope}/"
            pc.wait("term 1 confirmed", lambda: (c := self._etcd_json(root + "confirmed")) and c.get("timeline"), 30)
            self._wait_setting("the rule in force", lambda got: got.startswith("ANY 1"), 30)
        elif setup.synchronous_mode == "quorum":
            self._wait_setting("Patroni's quorum setting", lambda got: got.startswith("ANY 1"), 60)
        else:
            self._wait_setting("the passed-through setting", lambda got: got == self._ssn(), 30)
        self.first = pc.wait_leader(60)
        if self.first != "pg0":  # pg0 lost its leader key while the cluster was built (a loaded machine)
            why = [line[-160:] for line in pc.agents["pg0"].log.splitlines() if "emot" in line or "DCS" in line]
            self.notes.append(f"{self.first} leads after the build, not pg0: {' | '.join(why[-3:])}")
        create_ledger(pc.agents[self.first].dsn)

    def _adopt(self, policy: str) -> str:
        """``init --from-patroni`` on the leader; a refusal (no leader this instant: nothing changed) is retried."""
        pc = self.cluster
        deadline = time.monotonic() + 60
        while True:
            leader = pc.wait_leader(60)
            done = pc.pgcohort("init", "--from-patroni", pc.agents[leader].api, "--policy", policy, check=False)
            if done.returncode == 0:
                return done.stdout.strip().splitlines()[0]
            if done.returncode not in (3, 5) or time.monotonic() > deadline:
                raise AssertionError(f"init --from-patroni failed ({done.returncode}): {done.stdout}{done.stderr}")
            self.notes.append(f"init --from-patroni refused, retried: {done.stderr.strip()[:200]}")
            time.sleep(1)

    def _wait_setting(self, what: str, ok: Callable[[str], bool], timeout: float) -> None:
        """Wait until the leader's ``synchronous_standby_names`` is ``ok``; on a time-out, say what was seen last."""
        seen: dict[str, str | None] = {}

        def check() -> bool:
            seen["leader"] = leader = self.cluster.leader()
            seen["setting"] = self._setting(leader) if leader is not None else None
            seen["members"] = None  # with no leader: what /cluster said instead
            if leader is None:
                seen["members"] = (
                    ", ".join(f"{m.get('name')} {m.get('role')}" for m in self.cluster.members()) or "none"
                )
            return seen["setting"] is not None and ok(seen["setting"])

        try:
            self.cluster.wait(what, check, timeout)
        except AssertionError as e:
            first, _, rest = str(e).partition("\n")
            raise AssertionError(
                f"{first} (last seen: leader {seen.get('leader')}, setting {seen.get('setting')!r}, /cluster {seen.get('members')})\n{rest}"
            ) from None

    def _ssn(self) -> str:
        return f"ANY {self.policy_k} ({', '.join(self.ssn_members)})"

    def _setting(self, name: str) -> str:
        """``synchronous_standby_names`` on ``name`` ("" while it does not answer)."""
        try:
            with psycopg.connect(self.cluster.agents[name].dsn, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute("SHOW synchronous_standby_names").fetchone()
        except psycopg.Error:
            return ""
        return str(row[0]) if row else ""

    def _etcd_json(self, key: str) -> dict[str, Any] | None:
        assert self.etcd is not None
        try:
            raw = self.etcd.get_raw(key)
        except RuntimeError:  # no member answered
            return None
        doc = json.loads(raw) if raw else None
        return doc if isinstance(doc, dict) else None

    def _drop_in(self, a: Agent, doc: dict[str, Any]) -> None:
        path = os.path.join(a.conf_dir, TAGS)
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        os.chmod(path, 0o644)

    @property
    def cluster(self) -> StormCluster:
        assert self.pc is not None, "build() first"
        return self.pc

    # --- roles --------------------------------------------------------------------------------

    def primary(self) -> str:
        """Who the primary is now: Patroni's leader, else the node that took the last acknowledged write."""
        if self.observer is not None and self.observer.leader:
            return self.observer.leader
        last = self.history.last_ack()
        return last.node if last is not None else self.first

    def resolve(self, role: str) -> str:
        """A node for ``primary`` or ``replica:I`` (the I-th other node by name, modulo their number)."""
        primary = self.primary()
        if role == "primary":
            return primary
        others = sorted(n for n in self.cluster.agents if n != primary)
        return others[int(role.split(":")[1]) % len(others)]

    # --- playing ------------------------------------------------------------------------------

    def play(self) -> None:
        """Fire each event at its time and undo it after its hold; at the schedule's end, heal everything."""
        actions: list[tuple[float, int, bool]] = []
        for k, e in enumerate(self.schedule.events):
            actions.append((e.at, k, True))
            if e.hold is not None and e.at + e.hold < self.schedule.length:
                actions.append((e.at + e.hold, k, False))
        for at, k, begin in sorted(actions):
            self._sleep_until(at)
            e = self.schedule.events[k]
            if begin:
                self._begin(k, e)
            elif k in self.undo:
                self.undo.pop(k)()
        self._sleep_until(self.schedule.length)
        self.heal()

    def _sleep_until(self, at: float) -> None:
        while (left := at - self.history.now()) > 0:
            time.sleep(min(left, 0.5))

    def _begin(self, k: int, e: Event) -> None:
        try:
            undo = self._do(e)
        except Exception as exc:  # noqa: BLE001 (a fault that cannot be done is logged and skipped)
            self.log(f"{e.kind}: not done ({type(exc).__name__}: {exc})")
            return
        if undo is not None:
            self.undo[k] = undo

    def _in_background(self, what: str, fn: Callable[[], str]) -> None:
        """Run a slow action (a CLI, a sidecar start) without holding up the schedule; log its outcome."""

        def run() -> None:
            try:
                self.log(f"{what}: {fn()}")
            except Exception as exc:  # noqa: BLE001
                self.log(f"{what}: failed ({type(exc).__name__}: {exc})")

        t = threading.Thread(target=run, daemon=True)
        self.background.append(t)
        t.start()

    def _do(self, e: Event) -> Callable[[], None] | None:
        """Do ``e``; return how to undo it (None: nothing to undo)."""
        pc = self.cluster
        if e.kind == "kill":
            return self._kill(self.resolve(e.target), e.what)
        if e.kind == "pause-agent":
            name = self.resolve(e.target)
            proc = pc.agents[name].proc
            if proc is None or proc.poll() is not None:
                self.log(f"pause-agent {name}: its agent is not running")
                return None
            return self._stop(f"stopped agent:{name}", proc.pid, f"SIGSTOP {name}'s Patroni agent")
        if e.kind == "pause-walreceiver":
            name = self.resolve(e.target)
            pid = pc.wal_receiver(name)
            if pid is None:
                self.log(f"pause-walreceiver {name}: no WAL receiver runs")
                return None
            return self._stop(f"stopped walreceiver:{name}", pid, f"SIGSTOP {name}'s WAL receiver")
        if e.kind == "isolate":
            name = self.resolve(e.target)
            return self._cut([(name, o) for o in pc.agents if o != name] + [(name, ETCD)], f"isolate {name}")
        if e.kind == "cut-primary":
            name = self.primary()
            peers = sorted({self.resolve(f"replica:{p}") for p in e.peers})
            pairs = [(name, p) for p in peers] + ([(name, ETCD)] if e.etcd else [])
            return self._cut(pairs, f"cut {name} from {', '.join(peers)}{' and etcd' if e.etcd else ''}")
        if e.kind == "split-zones":
            zones = {z: [n for n, a in pc.agents.items() if a.zone == f"zone-{z}"] for z in ("a", "b")}
            away = zones["b" if e.what == "a" else "a"]
            pairs = [(x, y) for x in zones["a"] for y in zones["b"]] + [(n, ETCD) for n in away]
            return self._cut(pairs, f"split zone-a | zone-b, etcd with zone-{e.what}")
        if e.kind in ("etcd-kill", "etcd-leader"):
            assert self.etcd is not None
            m = etcd_member(self.etcd, e.target) if e.kind == "etcd-kill" else self.etcd.leader()
            return self._etcd_kill(m.name)
        if e.kind == "etcd-quorum":
            assert self.etcd is not None
            kept = etcd_member(self.etcd, e.target)
            undos = [
                self._stop(f"stopped etcd:{m.name}", m.proc.pid, f"SIGSTOP etcd {m.name}")
                for m in self.etcd.members
                if m is not kept and m.proc is not None and m.proc.poll() is None
            ]

            def cont_all() -> None:
                for u in undos:
                    if u is not None:
                        u()

            return cont_all
        if e.kind == "sidecar-kill":
            return self._sidecar_kill(self.resolve(e.target))
        if e.kind in ("member-add", "member-remove", "policy"):
            return self._admin(e)
        raise ValueError(f"unknown fault kind {e.kind!r}")

    # --- the faults ---------------------------------------------------------------------------

    def _hold(self, key: str) -> bool:
        """Count one more fault holding ``key`` down; True if it was up (this fault does the damage).

        Keys say how a thing is held ("stopped agent:pg0", "killed agent:pg0"): a kill of a paused
        agent still kills it, and its restart is a new process that the pause's SIGCONT leaves alone.
        """
        self.down[key] = self.down.get(key, 0) + 1
        return self.down[key] == 1

    def _release(self, key: str) -> bool:
        """One fault fewer holding ``key``; True if it is the last (this undo brings it back)."""
        self.down[key] = max(0, self.down.get(key, 0) - 1)
        return self.down[key] == 0

    def _kill(self, name: str, what: str) -> Callable[[], None] | None:
        a = self.cluster.agents[name]
        if what in ("postgres", "both"):
            pid = a.postmaster_pid()
            if pid is not None:
                kill_postmaster(pid)
        if what == "postgres":
            self.log(f"kill -9 {name}'s PostgreSQL")
            return None
        key = f"killed agent:{name}"
        if self._hold(key) and a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
        self.log(f"kill -9 {name}'s Patroni agent{' and PostgreSQL' if what == 'both' else ''}")

        def back() -> None:
            if self._release(key):
                self._start_agent(name)

        return back

    def _start_agent(self, name: str) -> None:
        a = self.cluster.agents[name]
        if a.proc is None or a.proc.poll() is not None:
            self.cluster.start_agent(a)
            self.log(f"{name}'s Patroni agent started again")

    def _stop(self, key: str, pid: int, what: str) -> Callable[[], None] | None:
        if not self._hold(key):
            self.log(f"{what}: already stopped")
        else:
            self.stopped[key] = Stopped.stop(pid)
            self.log(what)

        def cont() -> None:
            if self._release(key) and key in self.stopped:
                self.stopped.pop(key).cont()
                self.log(f"SIGCONT {key.removeprefix('stopped ')}")

        return cont

    def _cut(self, pairs: list[tuple[str, str]], what: str) -> Callable[[], None]:
        self.net.hold(pairs)
        self.log(what)

        def heal() -> None:
            self.net.release(pairs)
            self.log(f"healed: {what}")

        return heal

    def _etcd_kill(self, member: str) -> Callable[[], None]:
        assert self.etcd is not None
        m = next(x for x in self.etcd.members if x.name == member)
        key = f"killed etcd:{member}"
        if self._hold(key):
            self.etcd.kill(m)
        self.log(f"kill -9 etcd {member}")

        def back() -> None:
            assert self.etcd is not None
            if self._release(key) and (m.proc is None or m.proc.poll() is not None):
                self.etcd.restart(m, wait=False)
                self.log(f"etcd {member} started again")

        return back

    def _sidecar_kill(self, name: str) -> Callable[[], None] | None:
        if not self.setup.gated:
            self.log(f"sidecar-kill {name}: no sidecar in this setup")
            return None
        a = self.cluster.agents[name]
        key = f"killed sidecar:{name}"
        if self._hold(key) and a.sidecar is not None:
            a.sidecar.kill()
        self.log(f"kill -9 {name}'s sidecar")

        def back() -> None:
            if self._release(key):
                self._in_background(f"{name}'s sidecar started again", lambda: self._start_sidecar(name))

        return back

    def _start_sidecar(self, name: str) -> str:
        a = self.cluster.agents[name]
        if a.sidecar is not None and a.sidecar.proc is not None and a.sidecar.proc.poll() is None:
            return "it runs"
        self.cluster.start_sidecar(a)
        return "answering"

    # --- membership and policy, per setup -----------------------------------------------------

    def _admin(self, e: Event) -> Callable[[], None] | None:
        if e.kind == "policy":
            self._in_background("policy: 2 acknowledgements", lambda: self._policy(2))
            return lambda: self._in_background("policy back", lambda: self._policy(1))
        if e.kind == "member-add":
            self._in_background("member-add", self._member_add)
        else:
            pick = e.pick
            self._in_background("member-remove", lambda: self._member_remove(pick))
        return None

    def _members(self) -> list[str]:
        """The cohort as this setup sees it now."""
        if self.setup.gated:
            doc = self._etcd_json(f"/pgcohort/{self.cluster.scope}/ruleset") or {}
            return sorted(m["name"] for m in doc.get("rule", {}).get("cohort", []))
        if self.setup.synchronous_mode == "quorum":
            return sorted(n for n, a in self.cluster.agents.items() if not self._nosync(a))
        return sorted(self.ssn_members)

    def _nosync(self, a: Agent) -> bool:
        path = os.path.join(a.conf_dir, TAGS)
        if not os.path.exists(path):
            return False
        with open(path) as f:
            return bool((yaml.safe_load(f) or {}).get("tags", {}).get("nosync"))

    def _member_add(self) -> str:
        outside = [n for n in sorted(self.cluster.agents) if n not in self._members()]
        if not outside:
            return "nobody outside the cohort"
        return f"{outside[0]}: {self._set_member(outside[0], True)}"

    def _member_remove(self, pick: int) -> str:
        members = self._members()
        candidates = [n for n in members if n != self.primary()]
        if len(members) <= 2 or not candidates:
            return f"cohort {members} too small to remove one"
        name = candidates[pick % len(candidates)]
        return f"{name}: {self._set_member(name, False)}"

    def _set_member(self, name: str, member: bool) -> str:
        a = self.cluster.agents[name]
        if self.setup.gated:
            spec = f"{name}@{a.address}:{a.pg_port}/{a.zone}"
            return self._cli([PGCOHORT, "add", spec] if member else [PGCOHORT, "remove", name])
        if self.setup.synchronous_mode == "quorum":
            self._drop_in(a, {"tags": {"nosync": not member}})
            if a.proc is not None and a.proc.poll() is None:
                os.kill(a.proc.pid, signal.SIGHUP)  # Patroni reloads its configuration (later, if paused)
            return f"nosync {'removed' if member else 'set'}"
        if member:
            self.ssn_members = sorted({*self.ssn_members, name})
        else:
            self.ssn_members = [n for n in self.ssn_members if n != name]
        return self._patronictl("-p", f"synchronous_standby_names={self._ssn()}")

    def _policy(self, k: int) -> str:
        if self.setup.gated:
            return self._cli([PGCOHORT, "policy", "any 2" if k == 2 else str(self.setup.policy)])
        self.policy_k = k
        if self.setup.synchronous_mode == "quorum":
            return self._patronictl("-s", f"synchronous_node_count={k}")
        return self._patronictl("-p", f"synchronous_standby_names={self._ssn()}")

    def _cli(self, argv: list[str]) -> str:
        """A pgcohort command as an operator runs it (root namespace, pg0's configuration file)."""
        a = self.cluster.agents["pg0"]
        env = {**self.cluster.sidecar_env(a), "PGCOHORT_ACTOR": "storm"}
        code, last = run_quietly([*argv, "--config", a.pgcohort_config], env=env)
        return f"exit {code}: {last[:160]}"

    def _patronictl(self, *args: str) -> str:
        conf = os.path.join(self.cluster.agents["pg0"].conf_dir, "00-patroni.yml")
        code, last = run_quietly([PATRONICTL, "-c", conf, "edit-config", "--force", "-q", *args])
        return f"exit {code}{': ' + last[:160] if code else ''} ({' '.join(args)})"

    # --- the heal -----------------------------------------------------------------------------

    def heal(self) -> None:
        """Undo every fault still in force, then make sure everything runs and every cut is gone."""
        self.log("heal")
        for k in sorted(self.undo, reverse=True):
            with contextlib.suppress(Exception):
                self.undo.pop(k)()
        self.net.heal()
        for s in self.stopped.values():
            s.cont()
        self.stopped.clear()
        self.down.clear()
        assert self.etcd is not None
        for m in self.etcd.members:
            if m.proc is None or m.proc.poll() is not None:
                self.etcd.restart(m, wait=False)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGCONT)
        for name, a in self.cluster.agents.items():
            if a.proc is None or a.proc.poll() is not None:
                self._start_agent(name)
            else:
                os.kill(a.proc.pid, signal.SIGCONT)
            car = a.sidecar
            if self.setup.gated and (car is None or car.proc is None or car.proc.poll() is not None):
                self._in_background(f"{name}'s sidecar started again", partial(self._start_sidecar, name))

    # --- the whole run ------------------------------------------------------------------------

    def writable_primary(self, since: float, settle: float) -> str | None:
        """Patroni's running leader, once it has acknowledged writes for ``settle`` seconds after ``since``."""
        leader = self.cluster.leader()
        if leader is None:
            return None
        acks = [o.end for o in self.history.snapshot() if o.outcome == "ok" and o.node == leader and o.end >= since]
        if acks and max(acks) - min(acks) >= settle and self.history.now() - max(acks) < 1.0:
            return leader
        return None

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop.set()
        for w in self.writers:
            w.stop.set()
        if self.pc is not None:
            self.pc.close()
        if self.etcd is not None:
            self.etcd.close()
        self.net.close()


def run_schedule(
    schedule: Schedule, setup: Setup, *, recover: float = 120.0, settle: float = 3.0, measure_reuse: bool = False
) -> Result:
    """Play ``schedule`` against a fresh cluster of ``setup`` and check what the clients saw.

    With ``measure_reuse``, also wait (up to 90 s) until every node streams from the primary
    again: the least a next schedule on the same cluster would have to wait for.
    """
    t0 = time.monotonic()
    storm = Storm(setup, schedule)
    try:
        storm.build()
        built = time.monotonic() - t0
        pc = storm.cluster
        dsns = {n: a.dsn for n, a in pc.agents.items()}
        storm.history = History()  # the schedule's clock starts with the writers
        storm.log.clock = storm.history.now
        storm.observer = Observer(pc, storm.log).start()
        storm.writers = [
            Writer("sticky", storm.history, dsns, sticky=True, first=storm.first).start(),
            Writer("fresh-0", storm.history, dsns, sticky=False, turn=0).start(),
            Writer("fresh-1", storm.history, dsns, sticky=False, turn=1).start(),
        ]
        storm.play()
        healed = storm.history.now()
        primary = None
        while storm.history.now() - healed < recover:
            with contextlib.suppress(Exception):  # an agent answering garbage while it restarts
                primary = storm.writable_primary(healed, settle)
            if primary is not None:
                break
            time.sleep(0.5)
        recovery = storm.history.now() - healed if primary is not None else None
        if primary is None:
            storm.notes.append(f"no primary took writes within {recover:.0f}s of the heal")
        end = storm.history.now()
        for w in storm.writers:
            w.stop.set()
        for w in storm.writers:
            w.halt()
        for t in storm.background:
            t.join(30)
        read: frozenset[int] | None = None
        read_from = ""
        leader = primary or pc.leader()
        if leader is not None:
            try:
                read, read_from = read_ledger(pc.agents[leader].dsn), leader
            except psycopg.Error as exc:
                storm.notes.append(f"the final read on {leader} failed: {exc}")
        ops = storm.history.snapshot()
        ops += [checker.Op(i, w, n, s, end, "info") for i, (w, n, s) in storm.history.pending.items()]
        hist = checker.History(tuple(sorted(ops, key=lambda o: o.id)), 0.0, end, read, read_from)
        if read is not None:
            storm.log(f"final read on {read_from}: {len(read)} rows")
        reuse = None
        if measure_reuse and leader is not None:
            others = [n for n in pc.agents if n != leader]
            with contextlib.suppress(AssertionError):
                pc.wait("every node streaming", lambda: pc.streaming(others), 90, 0.5)
                reuse = storm.history.now() - healed
        leaders = [line for line in storm.log.lines if "Patroni's leader" in line]
        decisions = [
            f"{n}: {line}" for n, a in pc.agents.items() for line in a.log.splitlines() if DECISIONS.search(line)
        ]
        return Result(
            setup.name,
            schedule,
            hist,
            checker.check(hist),
            list(storm.log.lines),
            leaders,
            built,
            recovery,
            time.monotonic() - t0,
            storm.notes,
            reuse,
            decisions,
        )
    finally:
        storm.close()


def spans(ids: tuple[int, ...]) -> str:
    """Ids as ranges: ``1744-1748, 1750-1770``."""
    out: list[str] = []
    for i in ids:
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)


def describe(result: Result, *, ops: int = 40) -> str:
    """The schedule, what the nemesis did, the writes per tenure, what was not acknowledged, and the verdict."""
    r, h = result.report, result.history
    lines = [result.schedule.describe(), f"setup {result.setup}: what happened", *("  " + a for a in result.actions)]
    tenures: dict[tuple[str, int], list[checker.Op]] = {}
    for o in h.ops:
        if o.outcome == "ok":
            tenures.setdefault(o.tenure, []).append(o)
    lines.append("acknowledged writes per tenure (node, timeline):")
    for (node, tl), got in sorted(tenures.items(), key=lambda kv: min(o.start for o in kv[1])):
        lines.append(f"  {node} tl {tl}: {len(got):>5} writes, {min(o.start for o in got):6.1f}s - "
                     f"{max(o.end for o in got):6.1f}s, ids {min(o.id for o in got)}-{max(o.id for o in got)}")  # fmt: skip
    others = [o for o in h.ops if o.outcome != "ok"]
    lines.append(f"not acknowledged: {len(others)} (first {min(ops, len(others))})")
    lines += [
        f"  {o.id:>6} {o.writer:<8} {o.node} {o.start:6.2f}-{o.end:6.2f}s {o.outcome} {o.note}" for o in others[:ops]
    ]
    lines.append(result.summary())
    if r.lost:
        lines.append(f"LOST ({len(r.lost)}): {spans(r.lost)}")
    if r.unexpected:
        lines.append(f"UNEXPECTED ({len(r.unexpected)}): {spans(r.unexpected)}")
    if r.recovered:
        lines.append(f"recovered ({len(r.recovered)}): {spans(r.recovered)}")
    if r.failed_but_read:
        lines.append(f"FAILED BUT READ (a writer bug): {spans(r.failed_but_read)}")
    lines += [f"SPLIT BRAIN: {sb.describe()}" for sb in r.split_brain]
    lines += [f"note: {n}" for n in result.notes]
    if result.decisions:
        lines.append("the leader races, per node from its Patroni log:")
        lines += ["  " + d for d in result.decisions]
    lines.append(f"build {result.build_seconds:.1f}s, recovery "
                 f"{'-' if result.recovery_seconds is None else f'{result.recovery_seconds:.1f}s'}, "
                 f"total {result.total_seconds:.1f}s")  # fmt: skip
    return "\n".join(lines)


def to_json(result: Result) -> dict[str, Any]:
    """Everything a result holds, for a file a replay can be compared with (:func:`history_from_json` reads it)."""
    h = result.history
    return {
        "setup": result.setup,
        "seed": result.schedule.seed,
        "generator": result.schedule.version,
        "length": result.schedule.length,
        "schedule": [e.describe() for e in result.schedule.events],
        "actions": result.actions,
        "ops": [
            [o.id, o.writer, o.node, round(o.start, 4), round(o.end, 4), o.outcome, o.timeline, o.note] for o in h.ops
        ],
        "window": [h.start, h.end],
        "final_read": sorted(h.final_read) if h.final_read is not None else None,
        "read_from": h.read_from,
        "summary": result.summary(),
        "notes": result.notes,
    }


def history_from_json(doc: dict[str, Any]) -> checker.History:
    """The history :func:`to_json` wrote, for the checker to judge again."""
    ops = tuple(checker.Op(int(i), str(w), str(n), float(s), float(e), str(o), int(t), str(note))
                for i, w, n, s, e, o, t, note in doc["ops"])  # fmt: skip
    read = doc["final_read"]
    start, end = doc["window"]
    return checker.History(ops, float(start), float(end), None if read is None else frozenset(read), doc["read_from"])
