"""The node record: what each sidecar publishes, leased, under ``nodes/<name>``.

Pure: the format and its validation only. A record is status, not a decision: nothing
acts on it without a linearizable read of the ruleset and term. A record that does not
parse is kept as a :class:`NodeRecord` whose ``problem`` says why, so ``status`` can show
it and auto-admission can skip it (a malformed record is never admitted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pgcohort.core.rules import Member, check_member_name
from pgcohort.errors import PgcohortError

Role = Literal["primary", "replica", "unknown"]


@dataclass(frozen=True)
class StandbyState:
    """One standby as the primary's sidecar saw it in pg_stat_replication."""

    state: str
    sync_state: str
    lag_bytes: int | None


@dataclass(frozen=True)
class NodeRecord:
    name: str
    zone: str = ""
    host: str = ""
    port: int = 0
    role: Role = "unknown"
    lsn: int | None = None
    seen_revision: int | None = None
    applied_revision: int | None = None  # primary: the revision whose setting it verified in force
    barrier_revision: int | None = None  # primary: the revision whose barrier proved itself
    synchronous_standby_names: str | None = None  # primary: the setting it shows
    replication: dict[str, StandbyState] = field(default_factory=dict)
    postgres: str = ""  # why PostgreSQL did not answer
    fenced: str = ""  # why this primary enforces nothing
    at: str = ""
    problem: str = ""  # set when the stored record did not parse

    def member(self) -> Member | None:
        """The member this node would be if admitted; None unless the record is complete and valid."""
        if self.problem or not self.zone or not self.host or not self.port:
            return None
        try:
            return Member(self.name, self.host, self.port, self.zone)
        except PgcohortError:
            return None


def to_record(r: NodeRecord) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": r.name,
        "zone": r.zone,
        "host": r.host,
        "port": r.port,
        "role": r.role,
        "lsn": r.lsn,
        "seen_revision": r.seen_revision,
        "at": r.at,
    }
    if r.role == "primary":
        d |= {
            "applied_revision": r.applied_revision,
            "barrier_revision": r.barrier_revision,
            "synchronous_standby_names": r.synchronous_standby_names,
            "replication": {
                n: {"state": s.state, "sync_state": s.sync_state, "lag_bytes": s.lag_bytes}
                for n, s in sorted(r.replication.items())
            },
        }
    if r.postgres:
        d["postgres"] = r.postgres
    if r.fenced:
        d["fenced"] = r.fenced
    return d


def encode(r: NodeRecord) -> bytes:
    return json.dumps(to_record(r), sort_keys=True, separators=(",", ":")).encode()


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"field {key!r} must be a whole number or null")
    return v


def _text(d: dict[str, Any], key: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise ValueError(f"field {key!r} must be text")
    return v


def decode(name: str, raw: bytes) -> NodeRecord:
    """Parse the value of ``nodes/<name>``; never raises: a bad record carries its ``problem``."""
    try:
        check_member_name(name)
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        role = d.get("role", "unknown")
        if role not in ("primary", "replica", "unknown"):
            raise ValueError(f"unknown role {role!r}")
        reps: dict[str, StandbyState] = {}
        raw_reps = d.get("replication") or {}
        if not isinstance(raw_reps, dict):
            raise ValueError("field 'replication' must be an object")
        for n, v in raw_reps.items():
            if not isinstance(v, dict):
                raise ValueError(f"replication entry {n!r} must be an object")
            reps[str(n)] = StandbyState(_text(v, "state"), _text(v, "sync_state"), _opt_int(v, "lag_bytes"))
        setting = d.get("synchronous_standby_names")
        return NodeRecord(
            name,
            _text(d, "zone"),
            _text(d, "host"),
            _opt_int(d, "port") or 0,
            role,
            _opt_int(d, "lsn"),
            _opt_int(d, "seen_revision"),
            _opt_int(d, "applied_revision"),
            _opt_int(d, "barrier_revision"),
            setting if isinstance(setting, str) else None,
            reps,
            _text(d, "postgres"),
            _text(d, "fenced"),
            _text(d, "at"),
        )
    except (ValueError, PgcohortError) as e:
        return NodeRecord(name, problem=f"nodes/{name} is not a valid node record: {e}")
