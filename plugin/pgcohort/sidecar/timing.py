"""How long each step of a change took: ``pgcohort_change_step_seconds`` and one ``timings`` log line a change."""

from __future__ import annotations

import datetime
import logging
import time

from pgcohort.metrics import Metrics
from pgcohort.seams import View

log = logging.getLogger("pgcohort.sidecar")


class Timings:
    """The steps of the change being applied, and commit -> delivery times of the last revisions watched."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._delivered: dict[int, float] = {}  # revision -> seconds from its commit to the watch delivering it
        self._steps: dict[str, float] = {}  # step -> seconds, for the change being applied

    def delivered(self, view: View) -> None:
        """The watch delivered ``view``: commit -> delivery, by the committer's clock (one host: exact)."""
        if view.ruleset is None:
            return
        seconds = max(0.0, time.time() - _epoch(view.ruleset.changed_at))
        self._delivered[view.revision] = seconds
        self.metrics.change_step.labels("watch").observe(seconds)
        for old in sorted(self._delivered)[:-16]:  # a standby never finalizes: keep the last few only
            self._delivered.pop(old, None)

    def took(self, step: str, since: float, now: float | None = None) -> float:
        """Record how long ``step`` of the change in progress took; returns now (for the next step's start)."""
        now = time.monotonic() if now is None else now
        self.metrics.change_step.labels(step).observe(now - since)
        self._steps[step] = self._steps.get(step, 0.0) + (now - since)
        return now

    def finalized(self, revision: int) -> None:
        """The change at ``revision`` is done: log its timings and start afresh."""
        steps_ms = {"watch": self._delivered.get(revision, 0.0), **self._steps}
        log.info("timings revision=%s %s (ms)", revision, " ".join(f"{k}={v * 1000:.2f}" for k, v in steps_ms.items()))
        self._steps, self._delivered = {}, {r: s for r, s in self._delivered.items() if r > revision}


def _epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp (``changed_at``); now if it does not parse."""
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()
