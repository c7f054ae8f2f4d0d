"""Property tests of the failover rule against brute force (like raft's quorum quick_test).

For random cohorts, policies, phases, acknowledged writes and surveys:

* the fast rule (``|E| - K + 1`` per active rule) accepts a survey exactly when the survey
  meets every ack set the rule allows (enumerated by brute force);
* whenever a failover is allowed, the chosen candidate holds every acknowledged write,
  whichever active rule acknowledged it.

The last test weakens the rule to ``|E| - K`` and shows these properties catch it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from pgcohort.core import failover
from pgcohort.core import ruleset as core
from pgcohort.core.rules import AnyK, CrossZone, Member, Rule
from pgcohort.errors import PgcohortError


@dataclass(frozen=True)
class Case:
    ruleset: core.Ruleset
    primary: str
    acked_by: frozenset[str]  # who acknowledged the write (an ack set of one active rule)
    write: int  # the write's LSN
    positions: dict[str, int]  # every standby's position after revoke
    surveyed: frozenset[str]


@st.composite
def rulesets(draw: st.DrawFn) -> tuple[core.Ruleset, str]:
    n = draw(st.integers(2, 7))
    zones = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    members = tuple(Member(f"m{i}", zone=zones[i]) for i in range(n))
    primary = members[draw(st.integers(0, n - 1))].name

    def policy_for(cohort: tuple[Member, ...]) -> AnyK | CrossZone | None:
        pz = next(m.zone for m in cohort if m.name == primary)
        options: list[AnyK | CrossZone] = [AnyK(k) for k in range(1, len(cohort))]
        if any(m.zone != pz for m in cohort):
            options.append(CrossZone())
        return draw(st.sampled_from(options)) if options else None

    policy = policy_for(members)
    if policy is None:
        policy = AnyK(1)
        members = members + (Member("extra", zone="c"),)
    rule = Rule(policy, members)
    rs = core.initial(rule, primary, changed_by="t", now="")
    if draw(st.booleans()):  # joint phase: one change in flight
        kind = draw(st.sampled_from(["add", "remove", "policy"]))
        try:
            if kind == "add":
                change: core.Change = core.AddMember(Member("new", zone=draw(st.sampled_from("abc"))))
            elif kind == "remove":
                change = core.RemoveMember(draw(st.sampled_from([m.name for m in members if m.name != primary])))
            else:
                change = core.SetPolicy(draw(st.sampled_from([AnyK(k) for k in range(1, 4)] + [CrossZone()])))
            rs = core.propose(rs, change, primary, changed_by="t", now="")
        except PgcohortError:
            pass  # the change was refused: stay stable
    core.check_invariants(rs, primary)
    return rs, primary


def ack_sets(rule: Rule, primary: str) -> list[frozenset[str]]:
    """Every minimal set of standbys whose acks make a write durable under ``rule``."""
    e = [m.name for m in rule.electorate(primary)]
    return [frozenset(c) for c in itertools.combinations(e, rule.acks())]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    rs, primary = draw(rulesets())
    rule = draw(st.sampled_from(rs.active_rules()))  # the setting in force when the write was acked
    acked = draw(st.sampled_from(ack_sets(rule, primary)))
    write = 1000
    names = sorted({m.name for r in rs.active_rules() for m in r.cohort} - {primary})
    positions = {
        n: (draw(st.integers(write, write + 50)) if n in acked else draw(st.integers(0, write + 50))) for n in names
    }
    surveyed = frozenset(draw(st.sets(st.sampled_from(names))))
    return Case(rs, primary, acked, write, positions, surveyed)


def violation(c: Case) -> str | None:
    """What is wrong with the failover rule's answer for ``c`` (None if nothing)."""
    survey = {n: c.positions[n] for n in c.surveyed}
    decision = failover.decide(c.ruleset, c.primary, survey)
    for check in decision.checks:
        meets_all = all(a & c.surveyed for a in ack_sets(check.rule, c.primary))
        if check.ok != meets_all:
            return f"rule {check.rule.show()}: fast rule says {check.ok}, brute force {meets_all}"
    if decision.allowed:
        assert decision.candidate is not None
        if not c.ruleset.counts(decision.candidate):
            return f"candidate {decision.candidate} is not in every active cohort"
        if c.positions[decision.candidate] < c.write:
            return (
                f"candidate {decision.candidate} at {c.positions[decision.candidate]} misses the write "
                f"at {c.write} acknowledged by {sorted(c.acked_by)}"
            )
    return None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_failover_rule_matches_brute_force_and_keeps_acknowledged_writes(c: Case) -> None:
    assert violation(c) is None, violation(c)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_full_survey_of_a_stable_cohort_is_always_allowed(c: Case) -> None:
    """Liveness: reaching every standby of every active cohort allows a failover, unless the
    most advanced one may not be promoted (it is leaving or joining)."""
    names = set(c.positions)
    decision = failover.decide(c.ruleset, c.primary, c.positions)
    assert all(check.ok for check in decision.checks)
    top = max(c.positions.values())
    if any(c.positions[n] == top and c.ruleset.counts(n) for n in names):
        assert decision.allowed, str(decision)


def test_a_weakened_rule_is_caught(monkeypatch: object) -> None:
    """The properties above can fail: with |E| - K instead of |E| - K + 1 they find a loss."""
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(failover, "survey_size", lambda e, k: e - k)
        bad = find(cases(), lambda c: violation(c) is not None, settings=settings(max_examples=5000, database=None))
        assert violation(bad) is not None
    finally:
        mp.undo()
    assert violation(bad) is None  # the real rule handles the same case


def test_joint_phase_requires_both_rules() -> None:
    """Adding m3 to any 1 of (m0 m1 m2): a survey that satisfies only the new rule is refused."""
    rule = Rule(AnyK(1), tuple(Member(f"m{i}") for i in range(3)))
    rs = core.propose(
        core.initial(rule, "m0", changed_by="", now=""), core.AddMember(Member("m3")), "m0", changed_by="", now=""
    )
    # New rule: E = m1 m2 m3, K=1, need 3. Old rule: E = m1 m2, need 2.
    d = failover.decide(rs, "m0", {"m1": 5, "m2": 5, "m3": 5})
    assert d.allowed and d.candidate in {"m1", "m2", "m3"}
    d = failover.decide(rs, "m0", {"m1": 5, "m3": 7})
    assert not d.allowed
    assert "reach 1 more" in d.reason and "any 1 of (m0 m1 m2)" in d.reason


def test_each_refusal_names_its_cause_and_the_safe_next_step() -> None:
    rs = core.initial(Rule(AnyK(1), tuple(Member(n) for n in "abcd")), "a", changed_by="", now="")
    behind = failover.decide(rs, "a", {"b": 10, "c": 10, "d": 20}, candidate="b")
    assert not behind.allowed and "behind d" in behind.reason
    assert behind.remedy == "d is ahead: drop --candidate to let the gate choose, or choose d"  # no data loss here
    short = failover.decide(rs, "a", {"b": 10, "c": 10})
    assert "reach 1 more" in short.reason and "--allow-data-loss" in short.remedy
