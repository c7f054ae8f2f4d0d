"""``pgcohort sidecar``: one per PostgreSQL node.

It keeps the node's leased ``nodes/<name>`` record current, watches the ruleset, and beside
the primary carries out the steps :mod:`plugin.core.steps` decides: apply, barrier,
finalize, admit. Every decision starts from a linearizable read of the committed ruleset
and term; the setting itself is rendered from a read made inside the PostgreSQL advisory
lock that serialises writes (see :mod:`adapters.postgres`). It never writes a setting from
a ruleset it has not read as committed. When etcd is unreachable it changes nothing: the
last applied setting stays, ``/health`` fails, and it resumes by itself when etcd returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.postgres import Desired, Observation, PostgresNode
from plugin import protocol
from plugin.core import ruleset as core
from plugin.core import steps
from plugin.core.failover import format_lsn
from plugin.core.rules import Member
from plugin.errors import (
    BarrierPendingError,
    ConflictError,
    PgcohortError,
    PostgresError,
    RefusedError,
)
from plugin.metrics import Metrics
from plugin.store import EtcdStore, Revision, Snapshot, View

log = logging.getLogger("pgcohort.sidecar")


@dataclass(frozen=True)
class Settings:
    name: str
    zone: str
    host: str
    port: int
    interval: float = 1.0
    ttl: int = 10
    barrier_timeout: float = 10.0
    auto_admit: bool = False
    admit_max_lag: int = 16 * 1024 * 1024
    admit_stable_for: float = 10.0
    leave_timeout: float = 30.0


@dataclass
class State:
    """What the sidecar knows now; read by the HTTP handlers under ``Sidecar.lock``."""

    view: View | None = None  # the latest ruleset the watch delivered
    committed: Snapshot | None = None  # the latest linearizable read
    observation: Observation | None = None
    postgres_error: str = ""
    etcd_error: str = "not contacted yet"
    verified: str | None = None  # the setting verified in force (primary)
    applied_revision: int | None = None
    barrier_revision: int | None = None
    fenced: str = ""
    caught_up_since: dict[str, float] = field(default_factory=dict)
    joint_seen_at: float | None = None


class Sidecar:
    def __init__(self, settings: Settings, store: EtcdStore, pg: PostgresNode, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.pg = pg
        self.metrics = metrics
        self.state = State()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.registration = store.registration(settings.name, settings.ttl)
        self._published: tuple[dict[str, Any], float] | None = None
        self._watch = store.watch()

    # --- the watch --------------------------------------------------------------------

    def _follow(self) -> None:
        for view in self._watch:
            with self.lock:
                self.state.view = view
            self.metrics.seen.set(view.revision)
            self.wake.set()

    # --- one round --------------------------------------------------------------------

    def tick(self) -> None:
        s = self.state
        obs = self._observe()
        etcd_error = ""
        try:
            for _ in range(6):  # apply -> barrier -> finalize -> (admit) in one round when all goes well
                if not self._step(obs):
                    break
                obs = self._observe()
        except (PostgresError, RefusedError) as e:
            log.warning("%s", e)  # etcd answered; the step is retried next round
        except PgcohortError as e:
            etcd_error = str(e)
        try:
            self._publish(obs)
        except PgcohortError as e:
            etcd_error = etcd_error or str(e)
        if etcd_error and etcd_error != s.etcd_error:
            log.warning("etcd: %s", etcd_error)
        elif s.etcd_error and not etcd_error:
            log.info("etcd reachable")
        with self.lock:
            s.etcd_error = etcd_error
        self.metrics.healthy.set(1 if not self.health_problems() else 0)

    def _observe(self) -> Observation | None:
        """What this node's PostgreSQL reports now (None if it did not answer), recorded in the state."""
        s = self.state
        try:
            obs: Observation | None = self.pg.observe()
            error = ""
        except PostgresError as e:
            obs, error = None, str(e)
            if error != s.postgres_error:
                log.warning("%s", e)
        with self.lock:
            s.observation, s.postgres_error = obs, error
        return obs

    def _step(self, obs: Observation | None) -> bool:
        """Decide and carry out one step; True if another may follow at once."""
        s = self.state
        snap, term = self.store.read_both()
        now = time.monotonic()
        with self.lock:
            s.committed = snap
            if snap.ruleset.phase == "joint":
                s.joint_seen_at = s.joint_seen_at or now
            else:
                s.joint_seen_at = None
        self.metrics.ruleset(snap.ruleset, snap.revision, now - (s.joint_seen_at or now))
        admit = self._admission(snap, obs, now) if obs is not None and obs.primary else None
        local = steps.Local(
            self.settings.name,
            None if obs is None else obs.primary,
            None if obs is None else obs.setting,
            s.verified,
            s.barrier_revision,
        )
        step = steps.next_step(snap.ruleset, snap.revision, term.term.primary, local, admit)
        with self.lock:
            s.fenced = step.reason if isinstance(step, steps.Fenced) else ""
        self.metrics.fenced.set(1 if s.fenced else 0)
        if isinstance(step, steps.Apply):
            desired = self.pg.apply(self._fresh)
            with self.lock:
                s.verified, s.applied_revision = desired.setting, desired.revision
            self.metrics.applied.set(desired.revision)
            log.info("applied revision %s: synchronous_standby_names = %s", desired.revision, desired.setting)
            return True
        if isinstance(step, steps.Barrier):
            try:
                lsn = self.pg.barrier(f"{self.settings.name}:{step.revision}", timeout=self.settings.barrier_timeout)
            except BarrierPendingError as e:
                log.warning("%s", e)
                return False
            with self.lock:
                s.barrier_revision = step.revision
            log.info("barrier for revision %s acknowledged at LSN %s", step.revision, format_lsn(lsn))
            return True
        if isinstance(step, steps.Finalize):
            try:
                done = protocol.finish(self.store, actor=self.settings.name, expected=Revision(step.revision))
            except ConflictError:
                return True  # someone else moved it on: decide again from a new read
            self.metrics.changes.labels("finalized").inc()
            with self.lock:
                s.applied_revision = done.snapshot.revision
            self.metrics.applied.set(done.snapshot.revision)
            log.info("finalized at revision %s: %s", done.snapshot.revision, done.snapshot.ruleset.show())
            return True
        if isinstance(step, steps.Admit):
            self._admit(step.member)
            return True
        if s.verified is not None and s.verified == local.setting and local.primary and not s.fenced:
            with self.lock:
                s.applied_revision = snap.revision  # the committed rule's setting is in force
            self.metrics.applied.set(snap.revision)
        return False

    def _fresh(self) -> Desired:
        """Called inside the PostgreSQL lock: the setting of the ruleset committed *now*."""
        snap, term = self.store.read_both()
        if term.term.primary != self.settings.name:
            raise RefusedError(
                f"term {term.term.term} names {term.term.primary}, not {self.settings.name}: not applying"
            )
        rule = snap.ruleset.rule
        standbys = frozenset(m.name for m in rule.electorate(self.settings.name))
        return Desired(snap.revision, rule.render(self.settings.name), standbys)

    def _admission(self, snap: Snapshot, obs: Observation, now: float) -> Member | None:
        lags = {r.name: r.lag_bytes for r in obs.replication}
        self.metrics.lags(lags)
        if not self.settings.auto_admit:
            return None
        streaming = {r.name.lower(): r for r in obs.replication if r.state == "streaming"}
        candidates = {}
        for name, rec in self.store.nodes().items():
            rep = streaming.get(name.lower())
            if rec.get("role") != "replica" or "zone" not in rec:
                continue
            try:
                member = Member(name, str(rec.get("host")), int(rec.get("port", 0)), str(rec["zone"]))
            except (PgcohortError, ValueError, TypeError):
                continue  # a malformed record is never admitted
            candidates[name] = steps.Candidate(member, rep is not None, rep.lag_bytes if rep else None)
        since, chosen = steps.admission(
            snap.ruleset,
            candidates,
            self.state.caught_up_since,
            now,
            max_lag=self.settings.admit_max_lag,
            stable_for=self.settings.admit_stable_for,
        )
        with self.lock:
            self.state.caught_up_since = since
        return chosen

    def _admit(self, member: Member) -> None:
        try:
            done = protocol.change(self.store, core.AddMember(member), actor=self.settings.name)
        except RefusedError as e:
            self.metrics.changes.labels("refused").inc()
            log.warning("not admitting %s: %s", member.name, e)
            return
        except ConflictError:
            self.metrics.changes.labels("conflicted").inc()
            return
        self.metrics.changes.labels("proposed").inc()
        if done.conflicts:
            self.metrics.changes.labels("conflicted").inc(done.conflicts)
        log.info("admitted %s: version %s %s", member.name, done.snapshot.ruleset.version, done.snapshot.ruleset.show())

    # --- the node record --------------------------------------------------------------

    def record(self, obs: Observation | None) -> dict[str, Any]:
        s = self.state
        rec: dict[str, Any] = {
            "zone": self.settings.zone,
            "host": self.settings.host,
            "port": self.settings.port,
            "role": "unknown" if obs is None else ("primary" if obs.primary else "replica"),
            "lsn": None if obs is None else obs.lsn,
            "seen_revision": s.view.revision if s.view else None,
        }
        if obs is None:
            rec["postgres"] = s.postgres_error
        elif obs.primary:
            rec["applied_revision"] = s.applied_revision
            rec["barrier_revision"] = s.barrier_revision
            rec["synchronous_standby_names"] = obs.setting
            rec["replication"] = {
                r.name: {"state": r.state, "sync_state": r.sync_state, "lag_bytes": r.lag_bytes}
                for r in obs.replication
            }
        if s.fenced:
            rec["fenced"] = s.fenced
        return rec

    def _publish(self, obs: Observation | None) -> None:
        rec = self.record(obs)
        now = time.monotonic()
        if self._published and self._published[0] == rec and now - self._published[1] < self.settings.ttl / 3:
            return
        self.registration.publish({**rec, "at": protocol.now()})
        self._published = (rec, now)

    # --- health -----------------------------------------------------------------------

    def health_problems(self) -> list[str]:
        """Why this node does not agree with the committed ruleset (empty: healthy)."""
        with self.lock:
            s = replace(self.state)
        problems = []
        if s.etcd_error:
            problems.append(f"etcd: {s.etcd_error}")
        if s.postgres_error:
            problems.append(f"postgres: {s.postgres_error}")
        if s.fenced:
            problems.append(f"fenced: {s.fenced}")
        if s.committed is None:
            problems.append("no committed ruleset read yet")
            return problems
        if s.view is None or s.view.revision < s.committed.revision:
            problems.append(f"watch has not delivered revision {s.committed.revision} yet")
        if s.observation is not None and s.observation.primary and not s.fenced:
            try:
                desired = s.committed.ruleset.rule.render(self.settings.name)
            except PgcohortError as e:
                problems.append(str(e))
            else:
                if s.verified != desired or s.observation.setting != desired:
                    problems.append(f"the setting of revision {s.committed.revision} ({desired}) is not in force yet")
        return problems

    # --- running ----------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self._follow, name="watch", daemon=True).start()
        while not self.stopping.is_set():
            self.tick()
            self.wake.wait(self.settings.interval)
            self.wake.clear()
        self._watch.close()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


def leave(store: EtcdStore, name: str, *, timeout: float) -> str:
    """Remove ``name`` from the cohort through the protocol and wait until it is finalized.

    Returns what happened. The primary is never removed (switch over first); a node that is
    not a member only withdraws its record.
    """
    snap, term = store.read_both()
    message = f"{name} is not a member; nothing to remove"
    if term.term.primary == name:
        message = f"{name} is the primary: not removed (switch over first, then remove it)"
    elif snap.ruleset.rule.member(name) is not None:
        if snap.ruleset.phase == "joint":
            snap = _wait(store, lambda rs: rs.phase == "stable", timeout, "the change in progress to finish")
        done = protocol.change(store, core.RemoveMember(name), actor=name)
        _wait(
            store,
            lambda rs: rs.phase == "stable" and rs.rule.member(name) is None,
            timeout,
            f"removal of {name} to be finalized",
        )
        message = f"removed {name} (version {done.snapshot.ruleset.version}) and the removal was finalized"
    store.delete(store.node_key(name))
    return message


def _wait(store: EtcdStore, done: Any, timeout: float, what: str) -> Snapshot:
    deadline = time.monotonic() + timeout
    while True:
        snap = store.read()
        if done(snap.ruleset):
            return snap
        if time.monotonic() > deadline:
            raise RefusedError(f"gave up waiting {timeout:g}s for {what} (is the primary's sidecar running?)")
        time.sleep(0.1)


def install_signal_handlers(sidecar: Sidecar, leaving: threading.Event) -> None:
    def on_term(signum: int, frame: Any) -> None:
        leaving.set()
        sidecar.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, lambda s, f: sidecar.stop())
