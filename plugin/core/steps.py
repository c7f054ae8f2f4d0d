"""What a sidecar should do next, decided purely from what it observed (raft's Ready).

The sidecar feeds in the committed ruleset it read, the term, and what its own PostgreSQL
reports; this module answers with one step. The sidecar carries it out and reports back
by observing again. Ordering beside the primary (DESIGN.md, steps 2 and 3):

1. **Apply** until the setting rendered from the committed rule is verified in force.
2. In the joint phase, commit a **barrier** after that, and wait for its acknowledgement:
   WAL is ordered, so the standbys that acknowledged it hold every earlier write. The
   barrier proves itself (:func:`barrier_proven`): at least K members of the new rule's
   electorate must report a flush position at or past its LSN, because a WAL sender that
   has not processed the reload yet releases commits under the old setting.
3. Only then **finalize** (a CAS on the same revision). A finalize never precedes the
   barrier of the revision it finalizes, and a barrier never precedes the apply.

:func:`desired` is the one place that turns a committed ruleset into the setting a
primary must enforce; the sidecar, ``/health`` and ``pgcohort status`` all call it.

Admission (optional): a registered standby that is not in the cohort, streaming, and no
more than ``max_lag`` bytes behind for ``stable_for`` seconds is proposed as a member,
one at a time and only while the ruleset is stable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pgcohort.core.rules import Member
from pgcohort.core.ruleset import Ruleset
from pgcohort.errors import PgcohortError, RefusedError


@dataclass(frozen=True)
class Desired:
    """What the primary must enforce: a setting rendered from one committed revision."""

    revision: int
    setting: str
    standbys: frozenset[str]  # the names the setting lists (the rule's electorate)
    acks: int  # K: how many of them must acknowledge


def desired(ruleset: Ruleset, revision: int, term_primary: str, name: str) -> Desired:
    """The setting node ``name`` must enforce for the committed ``ruleset`` at ``revision``.

    Refused unless the term names ``name`` as the primary (a fenced node enforces nothing),
    or when the committed rule cannot be enforced by it.
    """
    if term_primary != name:
        raise RefusedError(f"the term names {term_primary}, not {name}: {name} enforces nothing")
    rule = ruleset.rule
    setting = rule.render(name)
    return Desired(revision, setting, frozenset(m.name for m in rule.electorate(name)), rule.acks())


def barrier_proven(target: Desired, acknowledged: Collection[str]) -> bool:
    """True when at least K of the listed standbys acknowledged the barrier themselves.

    ``acknowledged`` names the standbys whose reported flush position is at or past the
    barrier's LSN. Names match case-insensitively, as PostgreSQL matches them.
    """
    listed = {n.lower() for n in target.standbys}
    return len({n.lower() for n in acknowledged} & listed) >= target.acks


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
    target: Desired


@dataclass(frozen=True)
class Barrier:
    target: Desired

    @property
    def revision(self) -> int:
        return self.target.revision


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
        target = desired(ruleset, revision, term_primary, local.name)
    except PgcohortError as e:
        return Idle(f"cannot enforce revision {revision}: {e}")
    if local.setting != target.setting or local.verified != target.setting:
        return Apply(target)
    if ruleset.phase == "joint":
        if local.barrier != revision:
            return Barrier(target)
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
