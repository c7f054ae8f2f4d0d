"""The gate's last decision on a node: what the pre-promote hook decided, under ``decisions/<name>``.

Pure: the format only. It is status for people and dashboards (the sidecar on that node
exports it as metrics), never an input to a decision: terms are what the gate acts on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Result = Literal["allowed", "refused", "forced", "own-term", "unmanaged"]
RESULTS: tuple[Result, ...] = ("allowed", "refused", "forced", "own-term", "unmanaged")


@dataclass(frozen=True)
class GateDecision:
    candidate: str
    result: Result
    seconds: float  # how long the gate took to decide
    at: str  # when it decided (ISO 8601, UTC)
    term: int | None = None  # the term it committed or found naming the candidate
    reason: str = ""  # the first line of a refusal


def encode(d: GateDecision) -> bytes:
    return json.dumps(asdict(d), sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes) -> GateDecision | None:
    """The stored decision, or None if it does not parse (status only: never raises)."""
    try:
        d = json.loads(raw)
        result = d["result"]
        if result not in RESULTS:
            return None
        term = d.get("term")
        return GateDecision(
            str(d["candidate"]),
            result,
            float(d["seconds"]),
            str(d["at"]),
            int(term) if term is not None else None,
            str(d.get("reason", "")),
        )
    except (ValueError, TypeError, KeyError):
        return None
