"""Carrying out the step the core decided: verify an apply, the barrier and its proof, finalize, confirm, propose.

Each action reports back by changing the sidecar's :class:`~.state.State` (under its lock)
and its metrics; the loop then observes and decides again.
"""

from __future__ import annotations

import logging
import threading
import time

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.core import steps
from pgcohort.core.failover import format_lsn
from pgcohort.errors import BarrierPendingError, ConflictError, RefusedError
from pgcohort.metrics import Metrics
from pgcohort.seams import Node, Observation, Snapshot, Store, TermSnapshot
from pgcohort.sidecar.state import Settings, State
from pgcohort.sidecar.timing import Timings

log = logging.getLogger("pgcohort.sidecar")


class Actions:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        node: Node,
        metrics: Metrics,
        state: State,
        lock: threading.Lock,
        timings: Timings,
        stopping: threading.Event,
    ) -> None:
        self.settings, self.store, self.node, self.metrics = settings, store, node, metrics
        self.state, self.lock, self.timings, self.stopping = state, lock, timings, stopping

    def applied(self, revision: int) -> None:
        with self.lock:
            self.state.applied_revision = revision
        self.metrics.applied.set(revision)

    def verify(self, target: steps.Desired, since: float) -> bool:
        """Wait until the setting just written is in force; then it is this node's verified setting."""
        self.node.wait_in_force(target, timeout=self.settings.apply_timeout)
        self.timings.took("in_force", since)
        with self.lock:
            self.state.verified = target.setting
        self.applied(target.revision)
        log.info("applied revision %s: synchronous_standby_names = %s", target.revision, target.setting)
        return True

    def barrier(self, target: steps.Desired) -> bool:
        """Commit the barrier for ``target`` and wait until K of its standbys report it flushed."""
        t = time.monotonic()
        try:
            lsn = self.node.barrier(target.revision, timeout=self.settings.barrier_timeout)
        except BarrierPendingError as e:
            log.warning("%s", e)
            return False
        t = self.timings.took("barrier", t)
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
        self.timings.took("proof", t)
        with self.lock:
            self.state.barrier_revision = target.revision
        log.info(
            "barrier for revision %s at LSN %s flushed by %s", target.revision, format_lsn(lsn), " ".join(sorted(acked))
        )
        return True

    def finalize(self, snap: Snapshot, term: TermSnapshot) -> None:
        """Finalize from the read the decision was made on: the CAS compares its ruleset *and* term revisions."""
        t, revision = time.monotonic(), snap.revision
        try:
            done = protocol.finalize(self.store, actor=self.settings.name, based_on=(snap, term))
        except ConflictError:
            return  # someone else moved it on (or a failover moved the term): decide again from a new read
        self.timings.took("finalize", t)
        self.metrics.changes.labels("finalized").inc()
        self.applied(done.snapshot.revision)
        log.info("finalized at revision %s: %s", done.snapshot.revision, done.snapshot.ruleset.show())
        self.timings.finalized(revision)

    def confirm(self, term: TermSnapshot, obs: Observation | None) -> None:
        """Record that the term naming this node runs: the failover rule reasons from it from now on."""
        timeline = self.node.timeline()
        try:
            protocol.confirm(self.store, term, timeline, obs.lsn if obs else None, actor=self.settings.name)
        except ConflictError:
            return  # the term moved: decide again from a new read
        log.info(
            "confirmed term %s: %s runs as the primary on timeline %s", term.term.term, self.settings.name, timeline.id
        )

    def propose(self, change: core.Change, done: str) -> None:
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
