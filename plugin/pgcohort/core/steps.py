"""What a sidecar should do next, decided purely from what it observed (raft's Ready).

The sidecar feeds in the committed ruleset it read, the term, and what its own PostgreSQL
reports; this module answers with one step. The sidecar carries it out and reports back
by observing again. Ordering beside the primary (DESIGN.md, steps 2 and 3):

0. **Confirm** the term first when it names this running primary and its confirmation is
   not recorded yet: the failover rule reasons from the last confirmed term's primary
   (:mod:`pgcohort.core.term`), so a primary that acknowledges writes must be on record.
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

Healing (on unless ``heal_after`` is 0): a member of the rule that has not streamed from
this primary for ``heal_after`` seconds (the old primary after a failover, a dead standby) is
**benched**: removed through an ordinary change (joint phase, barrier, finalize) and kept on
the ruleset's bench, never below the policy's K, never while the current term was forced
(the old primary may then hold writes the new one lacks). A benched member that streams again
and stays caught up is admitted again. With ``auto_admit``, any registered standby that is
not in the cohort, streaming, and no more than ``max_lag`` bytes behind for ``stable_for``
seconds is proposed as a member too. One change at a time, only while the ruleset is stable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pgcohort.core.rules import Member, Rule
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
class Confirm:
    term: int


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


@dataclass(frozen=True)
class Bench:
    name: str
    why: str


Step = Idle | Fenced | Confirm | Apply | Barrier | Finalize | Admit | Bench


def next_step(
    ruleset: Ruleset,
    revision: int,
    term_primary: str,
    local: Local,
    admit: Member | None = None,
    *,
    term: int = 0,
    confirm: bool = False,
    bench: Bench | None = None,
) -> Step:
    """The next step for the node ``local`` describes; ``confirm``: term ``term``'s confirmation is due
    (:func:`pgcohort.core.term.confirmation_due`)."""
    if local.primary is None:
        return Idle("PostgreSQL did not answer; the last applied setting stays as it is")
    if not local.primary:
        return Idle("standby: nothing to apply")
    if term_primary != local.name:
        return Fenced(f"this node's PostgreSQL is a primary but term names {term_primary}: not applying anything")
    if confirm:
        return Confirm(term)
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
    if bench is not None:
        return bench
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
    anyone: bool = False,
) -> tuple[dict[str, float], Member | None]:
    """Track how long each candidate has been caught up; return who to admit, if anyone.

    Benched members are always candidates (as the bench records them); other registered
    standbys only with ``anyone`` (``auto_admit``).
    """
    since: dict[str, float] = {}
    for name, c in candidates.items():
        if ruleset.rule.member(name) is not None or any(m.name.lower() == name.lower() for m in ruleset.rule.cohort):
            continue
        if not anyone and ruleset.bench_member(name) is None:
            continue
        if c.streaming and c.lag_bytes is not None and c.lag_bytes <= max_lag:
            since[name] = caught_up_since.get(name, now)
    if ruleset.phase != "stable":
        return since, None
    ready = sorted(n for n, t in since.items() if now - t >= stable_for)
    if not ready:
        return since, None
    return since, ruleset.bench_member(ready[0]) or candidates[ready[0]].member


def healing(
    ruleset: Ruleset,
    primary: str,
    streaming: Collection[str],
    absent_since: Mapping[str, float],
    now: float,
    *,
    after: float,
    forced: bool = False,
) -> tuple[dict[str, float], Bench | None]:
    """Track since when each member of the rule but ``primary`` has not streamed; the one to bench, if any.

    The longest-absent member away for ``after`` seconds is benched, unless the rule without
    it could not be enforced (K above its electorate, or no member left outside the
    primary's zone), the ruleset is joint, healing is off (``after`` 0), or the current term
    was forced.
    """
    here = {n.lower() for n in streaming}
    since = {m.name: absent_since.get(m.name, now) for m in ruleset.rule.cohort
             if m.name != primary and m.name.lower() not in here}  # fmt: skip
    if after <= 0 or forced or ruleset.phase != "stable":
        return since, None
    for name in sorted(since, key=lambda n: (since[n], n)):
        away = now - since[name]
        if away < after:
            break
        rest = Rule(ruleset.rule.policy, tuple(m for m in ruleset.rule.cohort if m.name != name))
        try:
            rest.check(primary)
        except PgcohortError:
            continue  # never below the policy's K
        return since, Bench(name, f"not streaming for {away:.0f}s")
    return since, None
