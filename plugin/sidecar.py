"""``pgcohort sidecar``: one per database node, whatever drives it (a :class:`pgcohort.seams.Node`).

It keeps the node's leased ``nodes/<name>`` record current, watches the ruleset, and beside
the primary carries out the steps :func:`pgcohort.core.steps.next_step` decides: apply,
barrier, finalize, admit. Every decision starts from a linearizable read of the committed
ruleset and term. The apply renders the setting from a read made *inside* the node's
setting lock, so it never writes a setting from a ruleset it has not read as committed,
and never an older one than another writer already wrote. A barrier is finalized only
once it proved itself: K members of the new electorate report its LSN as flushed.
When etcd is unreachable it changes nothing: the last applied setting stays, ``/health``
fails, and it resumes by itself when etcd returns.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.core import steps
from pgcohort.core.failover import format_lsn
from pgcohort.core.node import NodeRecord, StandbyState
from pgcohort.core.rules import Member
from pgcohort.core.term import confirmation_due
from pgcohort.errors import (
    BarrierPendingError,
    ConflictError,
    InvalidRecordError,
    PgcohortError,
    PostgresError,
    RefusedError,
    TimedOutError,
)
from pgcohort.metrics import Metrics
from pgcohort.seams import Node, Observation, Snapshot, Store, TermSnapshot, View

log = logging.getLogger("pgcohort.sidecar")
GATE_READ_INTERVAL = 5.0  # seconds between reads of this node's gate decision (status, for metrics)
STANDBY_SETTLE = 0.2  # seconds a standby's sidecar waits after a change is delivered before its round


@dataclass(frozen=True)
class Settings:
    name: str
    zone: str
    host: str
    port: int
    interval: float = 1.0
    ttl: int = 10
    barrier_timeout: float = 10.0
    apply_timeout: float = 5.0
    auto_admit: bool = False
    admit_max_lag: int = 16 * 1024 * 1024
    admit_stable_for: float = 10.0
    leave_timeout: float = 30.0
    heal_after: float = 30.0  # seconds a member may stop streaming before it is benched; 0: never


@dataclass
class State:
    """What the sidecar knows now; read by the HTTP handlers under ``Sidecar.lock``."""

    view: View | None = None  # the latest ruleset the watch delivered
    committed: Snapshot | None = None  # the latest linearizable read
    term_primary: str | None = None
    observation: Observation | None = None
    postgres_error: str = ""
    etcd_error: str = "not contacted yet"
    verified: str | None = None  # the setting verified in force (primary)
    applied_revision: int | None = None
    barrier_revision: int | None = None  # the revision whose barrier proved itself
    fenced: str = ""
    caught_up_since: dict[str, float] = field(default_factory=dict)
    absent_since: dict[str, float] = field(default_factory=dict)  # members not streaming from this primary
    joint_seen_at: float | None = None
    refusal: str = ""  # why the last step was refused (for example Patroni's own sync mode is on)
    record_error: str = ""  # the ruleset or term in etcd is invalid: nothing is done from it


class Sidecar:
    def __init__(self, settings: Settings, store: Store, node: Node, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.node = node
        self.metrics = metrics
        self.state = State()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.registration = store.registration(settings.name, settings.ttl)
        self._published: tuple[NodeRecord, float] | None = None
        self._decisions_read_at = -GATE_READ_INTERVAL
        self._last_decision: str | None = None
        self._started_at = protocol.now()
        self._watch = store.watch()
        self._delivered: dict[int, float] = {}  # revision -> seconds from its commit to the watch delivering it
        self._timings: dict[str, float] = {}  # step -> seconds, for the change being applied

    # --- the watch --------------------------------------------------------------------

    def _follow(self) -> None:
        for view in self._watch:
            with self.lock:
                self.state.view = view
            self.wake.set()
            self.metrics.seen.set(view.revision)
            if view.ruleset is not None:  # commit -> delivered, by the committer's clock (one host: exact)
                delivered = self._delivered
                delivered[view.revision] = max(0.0, time.time() - _epoch(view.ruleset.changed_at))
                self.metrics.change_step.labels("watch").observe(delivered[view.revision])
                for old in sorted(delivered)[:-16]:  # a standby never finalizes: keep the last few only
                    delivered.pop(old, None)

    def _took(self, step: str, since: float, now: float | None = None) -> float:
        """Record how long ``step`` of the change in progress took (metrics and the timings log line)."""
        now = time.monotonic() if now is None else now
        self.metrics.change_step.labels(step).observe(now - since)
        self._timings[step] = self._timings.get(step, 0.0) + (now - since)
        return now

    # --- one round --------------------------------------------------------------------

    def tick(self) -> None:
        s = self.state
        obs = self._observe()
        etcd_error, record_error, refused = "", "", None
        try:
            for _ in range(6):  # apply -> barrier -> finalize -> (admit) in one round when all goes well
                if not self._step(obs):
                    break
                obs = self._observe()
            refusal = ""
        except (PostgresError, RefusedError) as e:
            refusal = str(e) if isinstance(e, RefusedError) else ""
            log.warning("%s", e)  # etcd answered; the step is retried next round
        except InvalidRecordError as e:  # keep the last good setting; act again only on a valid record
            record_error, refused, refusal = str(e), e.record, s.refusal
            if record_error != s.record_error:
                log.error("refusing to act: %s", e)
        except PgcohortError as e:
            etcd_error, refusal = str(e), s.refusal
        if s.record_error and not record_error and not etcd_error:
            log.info("the ruleset and term are valid again")
        if not etcd_error:
            self.metrics.refused_record(refused)
        self._eligibility()
        self._gate_decisions()
        try:
            self._publish(obs)
        except PgcohortError as e:
            etcd_error = etcd_error or str(e)
        if etcd_error and etcd_error != s.etcd_error:
            log.warning("etcd: %s", etcd_error)
        elif s.etcd_error and not etcd_error:
            log.info("etcd reachable")
        with self.lock:
            s.etcd_error, s.refusal = etcd_error, refusal
            if not etcd_error:
                s.record_error = record_error
        self.metrics.healthy.set(1 if not self.health_problems() else 0)

    def _observe(self) -> Observation | None:
        """What this node's database reports now (None if it did not answer), recorded in the state."""
        s = self.state
        try:
            obs: Observation | None = self.node.observe()
            error = ""
        except PostgresError as e:
            obs, error = None, str(e)
            if error != s.postgres_error:
                log.warning("%s", e)
        with self.lock:
            s.observation, s.postgres_error = obs, error
        self.metrics.is_primary.set(1 if obs is not None and obs.primary else 0)
        return obs

    def _step(self, obs: Observation | None) -> bool:
        """Decide one step from a fresh read and carry it out; True if another may follow at once.

        On a primary the read is made inside the node's setting lock, so an Apply writes the
        setting rendered from that very read (one etcd read per step) and never an older one
        than another writer already wrote.
        """
        s = self.state
        primary = obs is not None and obs.primary
        target: steps.Desired | None = None
        t = time.monotonic()
        with self.node.setting_lock() if primary else contextlib.nullcontext() as writer:
            locked = time.monotonic()
            snap, term = self.store.read_both()
            step = self._decide(snap, term, obs)
            if isinstance(step, steps.Apply) and writer is not None:  # timed only for a change, not idle rounds
                self._took("lock", t, locked)
                t = self._took("read", locked)
                target = steps.desired(snap.ruleset, snap.revision, term.term.primary, self.settings.name)
                writer.write(target)
                t = self._took("write", t)
        match step:
            case steps.Confirm():
                self._confirm(term, obs)
                return True
            case steps.Apply():
                return target is not None and self._verify(target, t)
            case steps.Barrier(target=wanted):
                return self._barrier(wanted)
            case steps.Finalize():
                self._finalize(snap, term)
            case steps.Admit(member):
                self._admit(member)
            case steps.Bench(name, why):
                self._change(core.RemoveMember(name, bench=True, why=why), f"benched {name}")
            case steps.Idle() | steps.Fenced():
                if (
                    obs is not None
                    and s.verified is not None
                    and s.verified == obs.setting
                    and primary
                    and not s.fenced
                ):
                    self._applied(snap.revision)  # the committed rule's setting is in force
                return False
        return True

    def _decide(self, snap: Snapshot, term: TermSnapshot, obs: Observation | None) -> steps.Step:
        s = self.state
        now = time.monotonic()
        with self.lock:
            s.committed, s.term_primary = snap, term.term.primary
            s.joint_seen_at = (s.joint_seen_at or now) if snap.ruleset.phase == "joint" else None
        self.metrics.ruleset(snap.ruleset, snap.revision, now - (s.joint_seen_at or now))
        self.metrics.terms(term.term.term, term.term.primary)
        admit = self._admission(snap, obs, now) if obs is not None and obs.primary else None
        bench = self._healing(snap, term, obs, now) if obs is not None and obs.primary else None
        local = steps.Local(
            self.settings.name,
            None if obs is None else obs.primary,
            None if obs is None else obs.setting,
            s.verified,
            s.barrier_revision,
        )
        step = steps.next_step(
            snap.ruleset,
            snap.revision,
            term.term.primary,
            local,
            admit,
            term=term.term.term,
            confirm=confirmation_due(term.term, term.confirmation),
            bench=bench,
        )
        with self.lock:
            s.fenced = step.reason if isinstance(step, steps.Fenced) else ""
        self.metrics.fenced.set(1 if s.fenced else 0)
        return step

    def _gate_decisions(self) -> None:
        """Export the gate's decisions on this node (it runs in another process: Patroni's hook)."""
        now = time.monotonic()
        if now - self._decisions_read_at < GATE_READ_INTERVAL:
            return
        self._decisions_read_at = now
        try:
            d = self.store.decision(self.settings.name)
        except PgcohortError:
            return
        if d is not None and d.at != self._last_decision:
            if self._last_decision is not None or self._started_at <= d.at:  # not the ones from before we started
                self.metrics.gate(d)
            self._last_decision = d.at

    def _eligibility(self) -> None:
        """Tell the HA manager whether this node may be promoted: only a member counted by every active rule."""
        committed = self.state.committed
        if committed is None:
            return
        eligible = committed.ruleset.counts(self.settings.name)
        try:
            if self.node.set_eligible(eligible):
                log.info(
                    "%s is %s",
                    self.settings.name,
                    "eligible for promotion" if eligible else "not eligible (not a member)",
                )
        except PgcohortError as e:
            log.warning("could not publish eligibility: %s", e)

    def _confirm(self, term: TermSnapshot, obs: Observation | None) -> None:
        """Record that the term naming this node runs: the failover rule reasons from it from now on."""
        timeline = self.node.timeline()
        try:
            protocol.confirm(self.store, term, timeline, obs.lsn if obs else None, actor=self.settings.name)
        except ConflictError:
            return  # the term moved: decide again from a new read
        log.info(
            "confirmed term %s: %s runs as the primary on timeline %s", term.term.term, self.settings.name, timeline.id
        )

    def _applied(self, revision: int) -> None:
        with self.lock:
            self.state.applied_revision = revision
        self.metrics.applied.set(revision)

    def _verify(self, target: steps.Desired, since: float) -> bool:
        """Wait until the setting just written is in force; then it is this node's verified setting."""
        self.node.wait_in_force(target, timeout=self.settings.apply_timeout)
        self._took("in_force", since)
        with self.lock:
            self.state.verified = target.setting
        self._applied(target.revision)
        log.info("applied revision %s: synchronous_standby_names = %s", target.revision, target.setting)
        return True

    def _barrier(self, target: steps.Desired) -> bool:
        """Commit the barrier for ``target`` and wait until K of its standbys report it flushed."""
        t = time.monotonic()
        try:
            lsn = self.node.barrier(target.revision, timeout=self.settings.barrier_timeout)
        except BarrierPendingError as e:
            log.warning("%s", e)
            return False
        t = self._took("barrier", t)
        deadline = time.monotonic() + self.settings.barrier_timeout
        while not steps.barrier_proven(target, acked := self.node.acknowledged(lsn)):
            if time.monotonic() > deadline:
                log.warning(
                    "barrier for revision %s at LSN %s released, but only %s of the %s required standbys of %s "
                    "report it flushed; not finalizing (a WAL sender may still enforce the old setting)",
                    target.revision,
                    format_lsn(lsn),
                    " ".join(sorted(acked)) or "none",
                    target.acks,
                    target.setting,
                )
                return False
            self.stopping.wait(0.002)
        self._took("proof", t)
        with self.lock:
            self.state.barrier_revision = target.revision
        log.info(
            "barrier for revision %s at LSN %s flushed by %s", target.revision, format_lsn(lsn), " ".join(sorted(acked))
        )
        return True

    def _finalize(self, snap: Snapshot, term: TermSnapshot) -> None:
        """Finalize from the read the decision was made on: the CAS compares its ruleset *and* term revisions."""
        t, revision = time.monotonic(), snap.revision
        try:
            done = protocol.finalize(self.store, actor=self.settings.name, based_on=(snap, term))
        except ConflictError:
            return  # someone else moved it on (or a failover moved the term): decide again from a new read
        self._took("finalize", t)
        self.metrics.changes.labels("finalized").inc()
        self._applied(done.snapshot.revision)
        log.info("finalized at revision %s: %s", done.snapshot.revision, done.snapshot.ruleset.show())
        steps_ms = {"watch": self._delivered.get(revision, 0.0), **self._timings}
        log.info("timings revision=%s %s (ms)", revision, " ".join(f"{k}={v * 1000:.2f}" for k, v in steps_ms.items()))
        self._timings, self._delivered = {}, {r: s for r, s in self._delivered.items() if r > revision}

    def _admission(self, snap: Snapshot, obs: Observation, now: float) -> Member | None:
        self.metrics.lags({r.name: r.lag_bytes for r in obs.replication})
        if not self.settings.auto_admit and not snap.ruleset.benched:
            return None
        streaming = {r.name.lower(): r for r in obs.replication if r.state == "streaming"}
        candidates = {}
        records = self.store.nodes()
        self.metrics.invalid_record.labels("node").set(sum(1 for r in records.values() if r.problem))
        for name, rec in records.items():
            rep = streaming.get(name.lower())
            member = rec.member()
            if rec.role != "replica" or member is None:
                continue  # a malformed or incomplete record is never admitted
            candidates[name] = steps.Candidate(member, rep is not None, rep.lag_bytes if rep else None)
        since, chosen = steps.admission(
            snap.ruleset,
            candidates,
            self.state.caught_up_since,
            now,
            max_lag=self.settings.admit_max_lag,
            stable_for=self.settings.admit_stable_for,
            anyone=self.settings.auto_admit,
        )
        with self.lock:
            self.state.caught_up_since = since
        return chosen

    def _healing(self, snap: Snapshot, term: TermSnapshot, obs: Observation, now: float) -> steps.Bench | None:
        """Bench a member that has not streamed from this primary for ``heal_after`` seconds (steps.healing)."""
        if term.term.primary != self.settings.name or not term.confirmed:
            return None
        streaming = [r.name for r in obs.replication if r.state == "streaming"]
        since, bench = steps.healing(
            snap.ruleset,
            self.settings.name,
            streaming,
            self.state.absent_since,
            now,
            after=self.settings.heal_after,
            forced=bool(term.term.forced),
        )
        with self.lock:
            self.state.absent_since = since
        return bench

    def _admit(self, member: Member) -> None:
        self._change(core.AddMember(member), f"admitted {member.name}")

    def _change(self, change: core.Change, done: str) -> None:
        """Propose ``change`` as this sidecar (admission, healing); a refusal or a conflict waits for the next round."""
        try:
            committed = protocol.propose(self.store, change, actor=self.settings.name)
        except RefusedError as e:
            self.metrics.changes.labels("refused").inc()
            log.warning("not proposing %s: %s", change, e)
            return
        except ConflictError:
            self.metrics.changes.labels("conflicted").inc()
            return
        self.metrics.changes.labels("proposed").inc()
        if committed.conflicts:
            self.metrics.changes.labels("conflicted").inc(committed.conflicts)
        rs = committed.snapshot.ruleset
        log.info("%s: version %s %s", done, rs.version, rs.show())

    # --- the node record --------------------------------------------------------------

    def record(self, obs: Observation | None) -> NodeRecord:
        s = self.state
        base = NodeRecord(
            self.settings.name,
            self.settings.zone,
            self.settings.host,
            self.settings.port,
            "unknown" if obs is None else ("primary" if obs.primary else "replica"),
            None if obs is None else obs.lsn,
            s.view.revision if s.view else None,
            postgres=s.postgres_error if obs is None else "",
            fenced=s.fenced,
        )
        if obs is None or not obs.primary:
            return base
        return replace(
            base,
            applied_revision=s.applied_revision,
            barrier_revision=s.barrier_revision,
            synchronous_standby_names=obs.setting,
            replication={r.name: StandbyState(r.state, r.sync_state, r.lag_bytes) for r in obs.replication},
        )

    def _publish(self, obs: Observation | None) -> None:
        rec = self.record(obs)  # unstamped: equal records mean an unchanged status
        now = time.monotonic()
        if self._published and rec == self._published[0] and now - self._published[1] < self.settings.ttl / 3:
            return
        self.registration.publish(replace(rec, at=protocol.now()))
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
        if s.refusal:
            problems.append(f"refused: {s.refusal}")
        if s.record_error:
            problems.append(f"invalid record: {s.record_error}")
        if s.committed is None:
            problems.append("no committed ruleset read yet")
            return problems
        if s.view is None or s.view.revision < s.committed.revision:
            problems.append(f"watch has not delivered revision {s.committed.revision} yet")
        if s.observation is not None and s.observation.primary and not s.fenced and s.term_primary:
            try:
                target = steps.desired(s.committed.ruleset, s.committed.revision, s.term_primary, self.settings.name)
            except PgcohortError as e:
                problems.append(str(e))
            else:
                if s.verified != target.setting or s.observation.setting != target.setting:
                    problems.append(f"the setting of revision {target.revision} ({target.setting}) is not in force yet")
        return problems

    # --- running ----------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self._follow, name="watch", daemon=True).start()
        while not self.stopping.is_set():
            self.tick()
            if self.wake.wait(self.settings.interval) and not self._primary():
                # A standby has nothing urgent to do on a change: leave the cores to the primary's apply.
                self.stopping.wait(STANDBY_SETTLE)
            self.wake.clear()
        self._watch.close()

    def _primary(self) -> bool:
        obs = self.state.observation
        return obs is not None and obs.primary

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


def _epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp (``changed_at``); now if it does not parse."""
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()


def leave(store: Store, name: str, *, timeout: float) -> str:
    """Remove ``name`` from the cohort through the protocol and wait until it is finalized.

    Returns what happened. The primary is never removed (switch over first); a node that is
    not a member only withdraws its record. TimedOutError if the finalize does not come in
    time (the removal stays committed; the node's record is kept).
    """
    snap, term = store.read_both()
    message = f"{name} is not a member; nothing to remove"
    if term.term.primary == name:
        message = f"{name} is the primary: not removed (switch over first, then remove it)"
    elif snap.ruleset.rule.member(name) is not None:
        if snap.ruleset.phase == "joint":
            _wait(store, lambda rs: rs.phase == "stable", timeout, "the change in progress to finish")
        done = protocol.propose(store, core.RemoveMember(name), actor=name)
        _wait(
            store,
            lambda rs: rs.phase == "stable" and rs.rule.member(name) is None,
            timeout,
            f"removal of {name} to be finalized (it is committed, version {done.snapshot.ruleset.version})",
        )
        message = f"removed {name} (version {done.snapshot.ruleset.version}) and the removal was finalized"
    store.registration(name, 1).withdraw()
    return message


def _wait(store: Store, done: Callable[[core.Ruleset], bool], timeout: float, what: str) -> Snapshot:
    deadline = time.monotonic() + timeout
    while True:
        snap = store.read()
        if done(snap.ruleset):
            return snap
        if time.monotonic() > deadline:
            raise TimedOutError(
                f"gave up waiting {timeout:g}s for {what}. Is the primary's sidecar running? `pgcohort status` "
                "shows the change in progress"
            )
        time.sleep(0.1)


def install_signal_handlers(sidecar: Sidecar, leaving: threading.Event) -> None:
    def on_term(signum: int, frame: Any) -> None:
        leaving.set()
        sidecar.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, lambda s, f: sidecar.stop())
