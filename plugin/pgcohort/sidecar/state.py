"""The sidecar's settings, and what it knows now (read by the HTTP handlers under ``Sidecar.lock``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgcohort.seams import Observation, Snapshot, View


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
