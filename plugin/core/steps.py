"""What a sidecar should do next, decided purely from what it observed (raft's Ready).

The sidecar feeds in the committed ruleset it read, the term, and what its own PostgreSQL
reports; this module answers with one step. The sidecar carries it out and reports back
by observing again. Ordering beside the primary (DESIGN.md, steps 2 and 3):

1. **Apply** until the setting rendered from the committed rule is verified in force.
2. In the joint phase, commit a **barrier** after that, and wait for its acknowledgement:
   WAL is ordered, so the standbys that acknowledged it hold every earlier write.
3. Only then **finalize** (a CAS on the same revision). A finalize never precedes the
   barrier of the revision it finalizes, and a barrier never precedes the apply.

Admission (optional): a registered standby that is not in the cohort, streaming, and no
more than ``max_lag`` bytes behind for ``stable_for`` seconds is proposed as a member,
one at a time and only while the ruleset is stable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from plugin.core.rules import Member
from plugin.core.ruleset import Ruleset
from plugin.errors import PgcohortError


@dataclass(frozen=True)
class Local:
    """What the sidecar knows of its own node."""

    name: str
    primary: bool | None  # None: PostgreSQL did not answer
    setting: str | None  # synchronous_standby_names as the server shows it
    verified: str | None  # the setting this sidecar last verified in force
    barrier: int | None  # the ruleset revision whose barrier was acknowledged


@dataclass(frozen=True)
class Idle:
    reason: str


@dataclass(frozen=True)
class Fenced:
    reason: str


@dataclass(frozen=True)
class Apply:
    revision: int
    setting: str


@dataclass(frozen=True)
class Barrier:
    revision: int


@dataclass(frozen=True)
class Finalize:
    revision: int


@dataclass(frozen=True)
class Admit:
    member: Member


Step = Idle | Fenced | Apply | Barrier | Finalize | Admit


def next_step(ruleset: Ruleset, revision: int, term_primary: str, local: Local, admit: Member | None = None) -> Step:
    if local.primary is None:
        return Idle("PostgreSQL did not answer; the last applied setting stays as it is")
    if not local.primary:
        return Idle("standby: nothing to apply")
    if term_primary != local.name:
        return Fenced(f"this node's PostgreSQL is a primary but term names {term_primary}: not applying anything")
    try:
        desired = ruleset.rule.render(local.name)
    except PgcohortError as e:
        return Idle(f"cannot enforce revision {revision}: {e}")
    if local.setting != desired or local.verified != desired:
        return Apply(revision, desired)
    if ruleset.phase == "joint":
        if local.barrier != revision:
            return Barrier(revision)
        return Finalize(revision)
    if admit is not None:
        return Admit(admit)
    return Idle(f"revision {revision} is in force")


@dataclass(frozen=True)
class Candidate:
    """A registered node outside the cohort, as the primary sees it."""

    member: Member
    streaming: bool
    lag_bytes: int | None


def admission(
    ruleset: Ruleset,
    candidates: Mapping[str, Candidate],
    caught_up_since: Mapping[str, float],
    now: float,
    *,
    max_lag: int,
    stable_for: float,
) -> tuple[dict[str, float], Member | None]:
    """Track how long each candidate has been caught up; return who to admit, if anyone."""
    since: dict[str, float] = {}
    for name, c in candidates.items():
        if ruleset.rule.member(name) is not None or any(m.name.lower() == name.lower() for m in ruleset.rule.cohort):
            continue
        if c.streaming and c.lag_bytes is not None and c.lag_bytes <= max_lag:
            since[name] = caught_up_since.get(name, now)
    if ruleset.phase != "stable":
        return since, None
    ready = sorted(n for n, t in since.items() if now - t >= stable_for)
    return since, (candidates[ready[0]].member if ready else None)
