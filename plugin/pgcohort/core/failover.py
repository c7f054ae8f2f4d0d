"""The failover rule: which surveys make a promotion safe, and which candidate it must be.

Pure: positions are given, nothing is read here.

For one rule with electorate E (the members that may acknowledge a write of the failed
primary) and ack count K, an acknowledged write is on at least K members of E. A survey of
``|E| - K + 1`` members of E therefore meets every such ack set (pigeonhole: the members
*not* surveyed number ``K - 1``, too few to hold all K acks). A survey counts a member only
after it was **revoked** (it no longer receives from the old primary), so its position can
not grow behind the survey's back.

In the joint phase both rules are active and a write may have been acknowledged under
either, so the survey must satisfy each rule on its own electorate. WAL is a single ordered
stream, so the surveyed member with the highest position holds every write any surveyed
member holds; the candidate must be in every active cohort and hold that highest position.

The failed primary is the **reference**: the primary of the last *confirmed* term
(:mod:`pgcohort.core.term`), not a later term's primary that may never have run. A position
is what a fenced member holds on disk (:class:`Position`: the end of valid WAL in its
pg_wal, and the timeline it is on); positions are compared on the reference primary's
timeline (:func:`on_reference`), and a member whose WAL is on a timeline the reference's
does not contain makes the failover refuse: some promotion happened that no confirmation
recorded, and its writes can only be judged from its own timeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pgcohort.core.rules import Rule
from pgcohort.core.ruleset import Ruleset
from pgcohort.core.term import Timeline
from pgcohort.errors import InvalidInputError


def survey_size(electorate: int, acks: int) -> int:
    """How many members of E a survey must reach: ``|E| - K + 1``."""
    return electorate - acks + 1


def parse_lsn(text: str) -> int:
    """``'0/3000060'`` -> 50331744 (PostgreSQL's pg_lsn text form)."""
    try:
        hi, lo = text.split("/")
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        raise InvalidInputError(f"invalid LSN {text!r}: expected the form 'X/Y' in hexadecimal") from None


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class Position:
    """What a fenced member holds on disk: the end of valid WAL in its pg_wal, on its newest timeline."""

    lsn: int
    timeline: int

    def __str__(self) -> str:
        return f"{format_lsn(self.lsn)} on timeline {self.timeline}"


def on_reference(
    positions: Mapping[str, Position], reference: Timeline | None
) -> tuple[dict[str, int], dict[str, str]]:
    """Each position as an LSN comparable on the reference primary's ``timeline``; and the members whose WAL
    is on a timeline it does not contain, with why.

    A member on the reference timeline counts its whole WAL; one on an ancestor counts it up
    to where the reference forked from it (beyond that it holds another history, which no
    write acknowledged on the reference's timeline is part of). While the reference's
    timeline is unknown (just after ``init``, before its sidecar recorded it), every position
    must be on one timeline.
    """
    if reference is None:
        timelines = sorted({p.timeline for p in positions.values()})
        if len(timelines) > 1:
            why = (
                f"surveyed members are on timelines {', '.join(map(str, timelines))} and the confirmed primary's "
                "timeline is not recorded yet"
            )
            return {}, {n: why for n in positions}
        return {n: p.lsn for n, p in positions.items()}, {}
    comparable, foreign = {}, {}
    for n, p in positions.items():
        held = reference.contains(p.timeline, p.lsn)
        if held is None:
            foreign[n] = (
                f"its WAL ends at {p}, a timeline that timeline {reference.id} of the confirmed primary does not "
                "contain"
            )
        else:
            comparable[n] = held
    return comparable, foreign


@dataclass(frozen=True)
class RuleCheck:
    """How the survey fared against one active rule."""

    rule: Rule
    electorate: tuple[str, ...]
    acks: int
    reached: tuple[str, ...]
    needed: int

    @property
    def ok(self) -> bool:
        return len(self.reached) >= self.needed

    @property
    def missing(self) -> int:
        return max(0, self.needed - len(self.reached))

    def __str__(self) -> str:
        state = "ok" if self.ok else f"{self.missing} more needed"
        return (
            f"{self.rule.show()}: reached {len(self.reached)} of {len(self.electorate)} "
            f"({' '.join(self.reached) or 'none'}), need {self.needed}: {state}"
        )


@dataclass(frozen=True)
class Wording:
    """How a refusal's remedy tells the operator to promote another member, or to accept a loss, in the words
    of whoever promotes: ``pgcohort failover`` by default; Patroni's are in :mod:`pgcohort.adapters.patroni`."""

    choose: str = "drop --candidate to let the gate choose, or choose {name}"
    other: str = "choose a member of every active cohort, or drop --candidate to let the gate choose"
    force: str = "pass --allow-data-loss"
    demote: str = "Let the HA manager demote it (or stop it), then retry"


PLAIN = Wording()
"""``pgcohort failover``'s own words (plain PostgreSQL)."""


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class FailoverDecision:
    allowed: bool
    candidate: str | None
    checks: tuple[RuleCheck, ...]
    reason: str
    remedy: str = ""  # refused: the safe next step for this cause

    def __str__(self) -> str:
        head = f"allowed: promote {self.candidate}" if self.allowed else f"refused: {self.reason}"
        return "\n".join([head] + [f"  {c}" for c in self.checks])


def check_rules(ruleset: Ruleset, old_primary: str, surveyed: Mapping[str, int]) -> tuple[RuleCheck, ...]:
    checks = []
    for rule in ruleset.active_rules():
        e = tuple(m.name for m in rule.electorate(old_primary))
        reached = tuple(n for n in e if n in surveyed)
        checks.append(RuleCheck(rule, e, rule.acks(), reached, survey_size(len(e), rule.acks())))
    return tuple(checks)


def decide(
    ruleset: Ruleset,
    old_primary: str,
    surveyed: Mapping[str, int],
    candidate: str | None = None,
    wording: Wording = PLAIN,
) -> FailoverDecision:
    """May a failover away from ``old_primary`` (the reference) proceed, given fenced members' positions?

    ``surveyed`` maps each fenced, reached member to its position, comparable on the
    reference's timeline (:func:`on_reference`). The reference itself is in it only when it
    is the candidate: a former primary taking its key back after a later term was never
    confirmed, compared like any member but never counted for the survey. Returns the
    decision with the chosen (or checked) candidate.
    """
    positions = {n: p for n, p in surveyed.items() if n != old_primary}
    checks = check_rules(ruleset, old_primary, positions)
    short = [c for c in checks if not c.ok]
    if short:
        reason = "; ".join(
            f"rule '{c.rule.show()}' needs {c.needed} of its {len(c.electorate)} standbys "
            f"surveyed, reached {len(c.reached)}: reach {c.missing} more"
            for c in short
        )
        return FailoverDecision(
            False,
            None,
            checks,
            reason,
            "Bring the missing members back (their PostgreSQL reachable), or, accepting the loss of "
            f"acknowledged writes, {wording.force}",
        )
    counted = {n: p for n, p in positions.items() if any(n in r.names for r in ruleset.active_rules())}
    if candidate == old_primary and old_primary in surveyed:
        counted[old_primary] = surveyed[old_primary]
    if not counted:
        return FailoverDecision(False, None, checks, "no cohort member was surveyed", "Bring cohort members back")
    top = max(counted.values())
    eligible = sorted(n for n in counted if ruleset.counts(n))
    ahead = " ".join(sorted(n for n, p in counted.items() if p == top))
    if candidate is None:
        best = [n for n in eligible if counted[n] == top]
        if not best:
            return FailoverDecision(
                False,
                None,
                checks,
                f"the most advanced surveyed member(s) {ahead} at {format_lsn(top)} are not "
                "in every active cohort; no eligible candidate holds every acknowledged write",
                f"Wait until a member of every active cohort has caught up with {ahead} (or the change in "
                f"progress is finalized), or, accepting the loss of acknowledged writes, {wording.force}",
            )
        return FailoverDecision(True, best[0], checks, f"{best[0]} holds the highest position {format_lsn(top)}")
    if not ruleset.counts(candidate):
        return FailoverDecision(
            False,
            None,
            checks,
            f"candidate {candidate} is not in every active cohort ({ruleset.show()})",
            _capital(wording.other),
        )
    if candidate not in counted:
        return FailoverDecision(
            False,
            None,
            checks,
            f"candidate {candidate} was not surveyed",
            f"Make {candidate}'s PostgreSQL reachable, or {wording.other}",
        )
    if counted[candidate] < top:
        return FailoverDecision(
            False,
            None,
            checks,
            f"candidate {candidate} is at {format_lsn(counted[candidate])}, behind "
            f"{ahead} at {format_lsn(top)}: it may miss acknowledged writes",
            f"{ahead} is ahead: {wording.choose.format(name=ahead.split()[0])}",
        )
    return FailoverDecision(True, candidate, checks, f"{candidate} holds the highest position {format_lsn(top)}")
