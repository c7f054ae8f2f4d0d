"""The sidecar's control loop, raft's Ready/Advance: observe, read, ask the core, carry out, report."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from pgcohort.core import ruleset as core
from pgcohort.core import steps
from pgcohort.core.term import confirmation_due
from pgcohort.errors import InvalidRecordError, PgcohortError, PostgresError, RefusedError
from pgcohort.metrics import Metrics
from pgcohort.seams import Node, Observation, Snapshot, Store, TermSnapshot
from pgcohort.sidecar.actions import Actions
from pgcohort.sidecar.proposals import Proposals
from pgcohort.sidecar.state import Settings, State
from pgcohort.sidecar.status import Status
from pgcohort.sidecar.timing import Timings

log = logging.getLogger("pgcohort.sidecar")
STANDBY_SETTLE = 0.2  # seconds a standby's sidecar waits after a change is delivered before its round


class Sidecar:
    def __init__(self, settings: Settings, store: Store, node: Node, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.node = node
        self.metrics = metrics
        self.state = State()
        self.lock = threading.Lock()  # guards state: the HTTP handlers read it from their threads
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.timings = Timings(metrics)
        self.actions = Actions(settings, store, node, metrics, self.state, self.lock, self.timings, self.stopping)
        self.proposals = Proposals(settings, store, metrics, self.state, self.lock)
        self.status = Status(settings, store, node, metrics, self.state, self.lock)
        self._watch = store.watch()

    def health_problems(self) -> list[str]:
        """Why this node does not agree with the committed ruleset (empty: healthy)."""
        return self.status.health_problems()

    # --- the watch --------------------------------------------------------------------

    def _follow(self) -> None:
        for view in self._watch:
            with self.lock:
                self.state.view = view
            self.wake.set()
            self.metrics.seen.set(view.revision)
            self.timings.delivered(view)

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
        self.status.eligibility()
        self.status.gate_decisions()
        try:
            self.status.publish(obs)
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
                self.timings.took("lock", t, locked)
                t = self.timings.took("read", locked)
                target = steps.desired(snap.ruleset, snap.revision, term.term.primary, self.settings.name)
                writer.write(target)
                t = self.timings.took("write", t)
        match step:
            case steps.Confirm():
                self.actions.confirm(term, obs)
                return True
            case steps.Apply():
                return target is not None and self.actions.verify(target, t)
            case steps.Barrier(target=wanted):
                return self.actions.barrier(wanted)
            case steps.Finalize():
                self.actions.finalize(snap, term)
            case steps.Admit(member):
                self.actions.propose(core.AddMember(member), f"admitted {member.name}")
            case steps.Bench(name, why):
                self.actions.propose(core.RemoveMember(name, bench=True, why=why), f"benched {name}")
            case steps.Idle() | steps.Fenced():
                if (
                    obs is not None
                    and s.verified is not None
                    and s.verified == obs.setting
                    and primary
                    and not s.fenced
                ):
                    self.actions.applied(snap.revision)  # the committed rule's setting is in force
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
        primary = obs is not None and obs.primary
        admit = self.proposals.admission(snap, obs, now) if obs is not None and primary else None
        bench = self.proposals.healing(snap, term, obs, now) if obs is not None and primary else None
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
