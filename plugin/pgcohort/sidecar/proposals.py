"""The changes the primary's sidecar proposes by itself: admission and healing (see :mod:`pgcohort.core.steps`)."""

from __future__ import annotations

import threading

from pgcohort.core import steps
from pgcohort.core.rules import Member
from pgcohort.metrics import Metrics
from pgcohort.seams import Observation, Snapshot, Store, TermSnapshot
from pgcohort.sidecar.state import Settings, State


class Proposals:
    def __init__(self, settings: Settings, store: Store, metrics: Metrics, state: State, lock: threading.Lock) -> None:
        self.settings, self.store, self.metrics, self.state, self.lock = settings, store, metrics, state, lock

    def admission(self, snap: Snapshot, obs: Observation, now: float) -> Member | None:
        """A benched member (or, with ``auto_admit``, a registered standby) caught up long enough to admit."""
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

    def healing(self, snap: Snapshot, term: TermSnapshot, obs: Observation, now: float) -> steps.Bench | None:
        """A member that has not streamed from this primary for ``heal_after`` seconds, to bench."""
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
