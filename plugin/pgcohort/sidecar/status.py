"""What the sidecar tells others: its ``nodes/<name>`` record, ``/health``, eligibility, the gate's decisions.

Nothing here changes the ruleset; each function reports what :class:`~.state.State` holds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from pgcohort import protocol
from pgcohort.core import steps
from pgcohort.core.node import NodeRecord, StandbyState
from pgcohort.errors import PgcohortError
from pgcohort.metrics import Metrics
from pgcohort.seams import Node, Observation, Store
from pgcohort.sidecar.state import Settings, State

log = logging.getLogger("pgcohort.sidecar")
GATE_READ_INTERVAL = 5.0  # seconds between reads of this node's gate decision (status, for metrics)


class Status:
    def __init__(
        self, settings: Settings, store: Store, node: Node, metrics: Metrics, state: State, lock: threading.Lock
    ) -> None:
        self.settings, self.store, self.node, self.metrics = settings, store, node, metrics
        self.state, self.lock = state, lock
        self.registration = store.registration(settings.name, settings.ttl)
        self._published: tuple[NodeRecord, float] | None = None
        self._decisions_read_at = -GATE_READ_INTERVAL
        self._last_decision: str | None = None
        self._started_at = protocol.now()

    def record(self, obs: Observation | None) -> NodeRecord:
        """This node's record as it stands (unstamped)."""
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

    def publish(self, obs: Observation | None) -> None:
        """Write the record when it changed, or a third of its lease went by."""
        rec = self.record(obs)  # unstamped: equal records mean an unchanged status
        now = time.monotonic()
        if self._published and rec == self._published[0] and now - self._published[1] < self.settings.ttl / 3:
            return
        self.registration.publish(replace(rec, at=protocol.now()))
        self._published = (rec, now)

    def eligibility(self) -> None:
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

    def gate_decisions(self) -> None:
        """Export the gate's decisions on this node (it runs in another process: the HA manager's hook)."""
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
