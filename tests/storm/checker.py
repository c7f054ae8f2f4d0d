"""The checker: a history of writes and a final read become a report, like Jepsen's set checker.

Pure: no clock, no I/O. Every write has a unique id and one of three outcomes:

* ``ok``   -- acknowledged: its commit returned, in time, without the warning "canceling wait for
  synchronous replication" (tests/race.py's rule); it names the node and the timeline it was written on;
* ``fail`` -- it certainly did not commit (no connection, or an error before COMMIT was sent);
* ``info`` -- unknown: the commit was sent and did not return in time, failed, or warned.

Against the final read on the surviving primary:

* **lost**       acknowledged, not read;
* **unexpected** read, never attempted;
* **recovered**  read, not acknowledged (``info``, or ``fail``: those are also counted apart as
  ``failed_but_read``, which is a bug in the writer's classification, never in the cluster).

Availability is read from the acknowledgements alone: the share of 0.1 s buckets of the window
with at least one acknowledged write (by the time its commit returned), and the seconds spent in
gaps of more than :data:`GAP` seconds without any (no writable primary for the clients).

A **split brain** is two *tenures* -- a node on one timeline, so a node promoted again on a new
timeline is a new tenure -- that certainly accepted writes at the same time. Each acknowledged
write committed somewhere inside [start, end] of its attempt, and a tenure accepts over one
interval, so tenures A and B overlapped for sure when A acknowledged a write that ended before
one of B's started and B one that ended before one of A's started. A failover where the old
primary stops before the new one starts never meets that; a zombie primary still acknowledging
through a standby after the new one's first acknowledged write always does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

BUCKET = 0.1  # seconds
GAP = 1.0  # seconds without an acknowledgement that count as "no writable primary"
OUTCOMES = ("ok", "fail", "info")


@dataclass(frozen=True)
class Op:
    """One write: attempted at ``start``, its outcome known (or given up) at ``end``."""

    id: int
    writer: str
    node: str  # where the client sent it
    start: float
    end: float
    outcome: str  # ok | fail | info
    timeline: int = 0  # ok: the timeline the node wrote it on
    note: str = ""  # fail, info: what the client saw (an error's first line, "timed out", the warning)

    @property
    def tenure(self) -> tuple[str, int]:
        return (self.node, self.timeline)


@dataclass(frozen=True)
class History:
    """What the clients saw from ``start`` to ``end``, and the final read (None: no primary to read from)."""

    ops: tuple[Op, ...]
    start: float
    end: float
    final_read: frozenset[int] | None
    read_from: str = ""


@dataclass(frozen=True)
class SplitBrain:
    """Two tenures that both acknowledged writes at some common moment, within ``start``-``end``."""

    first: tuple[str, int]
    second: tuple[str, int]
    start: float
    end: float
    writes: int  # acknowledged writes of either tenure that returned inside [start, end]

    def describe(self) -> str:
        (a, ta), (b, tb) = self.first, self.second
        return (
            f"{a} (timeline {ta}) and {b} (timeline {tb}) both acknowledged writes between "
            f"{self.start:.1f}s and {self.end:.1f}s ({self.writes} writes)"
        )


@dataclass(frozen=True)
class Report:
    """The checker's verdict on one history."""

    attempted: int
    acknowledged: int
    failed: int
    unknown: int
    final_read: bool
    lost: tuple[int, ...]
    unexpected: tuple[int, ...]
    recovered: tuple[int, ...]
    failed_but_read: tuple[int, ...]
    availability: float  # 0..1
    unavailable: float  # seconds in gaps > GAP without an acknowledged write
    longest_gap: float
    split_brain: tuple[SplitBrain, ...] = field(default=())

    @property
    def safe(self) -> bool:
        """Nothing lost, nothing unexpected, no split brain, and a final read to know it."""
        return self.final_read and not self.lost and not self.unexpected and not self.split_brain


def report_to_json(report: Report) -> dict[str, Any]:
    """A report as plain JSON (a line of a reports file): no ops, so a run of hundreds of schedules stays small."""
    doc = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(report).items()}
    doc["split_brain"] = [[list(sb.first), list(sb.second), sb.start, sb.end, sb.writes] for sb in report.split_brain]
    return doc


def report_from_json(doc: dict[str, Any]) -> Report:
    """The report :func:`report_to_json` wrote."""
    ids = {k: tuple(doc[k]) for k in ("lost", "unexpected", "recovered", "failed_but_read")}
    brains = tuple(SplitBrain(tuple(a), tuple(b), s, e, w) for a, b, s, e, w in doc["split_brain"])
    return Report(**{**doc, **ids, "split_brain": brains})


def check(history: History) -> Report:
    """The report for ``history`` (see the module's docstring for each figure's definition)."""
    seen: set[int] = set()
    for op in history.ops:
        if op.outcome not in OUTCOMES:
            raise ValueError(f"write {op.id}: unknown outcome {op.outcome!r}")
        if op.id in seen:
            raise ValueError(f"write id {op.id} attempted twice: ids must be unique")
        seen.add(op.id)
    acked = {op.id for op in history.ops if op.outcome == "ok"}
    failed = {op.id for op in history.ops if op.outcome == "fail"}
    read = history.final_read
    oks = [op for op in history.ops if op.outcome == "ok"]
    gaps = _gaps(sorted(op.end for op in oks), history.start, history.end)
    return Report(
        attempted=len(history.ops),
        acknowledged=len(acked),
        failed=len(failed),
        unknown=len(history.ops) - len(acked) - len(failed),
        final_read=read is not None,
        lost=tuple(sorted(acked - read)) if read is not None else (),
        unexpected=tuple(sorted(read - seen)) if read is not None else (),
        recovered=tuple(sorted((read & seen) - acked)) if read is not None else (),
        failed_but_read=tuple(sorted(read & failed)) if read is not None else (),
        availability=availability(oks, history.start, history.end),
        unavailable=sum(g for g in gaps if g > GAP),
        longest_gap=max(gaps, default=0.0),
        split_brain=split_brains(oks),
    )


def availability(oks: Iterable[Op], start: float, end: float) -> float:
    """The share of BUCKET-wide buckets of [start, end) in which at least one acknowledged write returned."""
    buckets = max(1, int(round((end - start) / BUCKET)))
    hit = {int((op.end - start) / BUCKET) for op in oks if start <= op.end < end}
    return len({b for b in hit if b < buckets}) / buckets


def _gaps(times: list[float], start: float, end: float) -> list[float]:
    """The gaps between consecutive acknowledgements, the window's start and end included."""
    points = [start, *(t for t in times if start <= t <= end), end]
    return [b - a for a, b in zip(points, points[1:], strict=False)]


def split_brains(oks: Iterable[Op]) -> tuple[SplitBrain, ...]:
    """Every pair of tenures that certainly acknowledged writes at a common moment."""
    by_tenure: dict[tuple[str, int], list[Op]] = {}
    for op in oks:
        by_tenure.setdefault(op.tenure, []).append(op)
    bounds = {
        t: (min(o.start for o in ops), min(o.end for o in ops), max(o.start for o in ops), max(o.end for o in ops))
        for t, ops in by_tenure.items()
    }
    found = []
    tenures = sorted(by_tenure)
    for i, a in enumerate(tenures):
        for b in tenures[i + 1 :]:
            first_a, lo_a, hi_a, last_a = bounds[a]
            first_b, lo_b, hi_b, last_b = bounds[b]
            if a[0] == b[0] and a[1] != b[1]:
                continue  # one node on two timelines: promoted again, never at once
            if lo_a < hi_b and lo_b < hi_a:
                start, end = max(first_a, first_b), min(last_a, last_b)
                writes = sum(1 for o in by_tenure[a] + by_tenure[b] if start <= o.end <= end)
                first, second = sorted((a, b), key=lambda t: (bounds[t][0], t))
                found.append(SplitBrain(first, second, start, end, writes))
    return tuple(sorted(found, key=lambda s: (s.start, s.first, s.second)))
