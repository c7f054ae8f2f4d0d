"""The sidecar's pure decisions: apply before barrier before finalize; admission."""

from __future__ import annotations

import pytest

from pgcohort.core import ruleset as core
from pgcohort.core import steps
from pgcohort.core.rules import AnyK, Member, Rule
from pgcohort.errors import RefusedError

RULE = Rule(AnyK(1), (Member("pg0"), Member("pg1"), Member("pg2")))
STABLE = core.initial(RULE, "pg0", changed_by="", now="")
JOINT = core.propose(STABLE, core.AddMember(Member("pg3")), "pg0", changed_by="", now="")
WIDE = "ANY 1 (pg1, pg2, pg3)"
TARGET = steps.Desired(7, WIDE, frozenset({"pg1", "pg2", "pg3"}), 1)


def local(
    *,
    name: str = "pg0",
    primary: bool | None = True,
    setting: str | None = "",
    verified: str | None = None,
    barrier: int | None = None,
) -> steps.Local:
    return steps.Local(name, primary, setting, verified, barrier)


def test_order_beside_the_primary() -> None:
    assert steps.next_step(JOINT, 7, "pg0", local(setting="ANY 1 (pg1, pg2)")) == steps.Apply(TARGET)
    # written but not verified by this sidecar (e.g. after a restart): apply again, idempotently
    assert steps.next_step(JOINT, 7, "pg0", local(setting=WIDE)) == steps.Apply(TARGET)
    assert steps.next_step(JOINT, 7, "pg0", local(setting=WIDE, verified=WIDE)) == steps.Barrier(TARGET)
    assert steps.next_step(JOINT, 7, "pg0", local(setting=WIDE, verified=WIDE, barrier=5)) == steps.Barrier(TARGET)
    assert steps.next_step(JOINT, 7, "pg0", local(setting=WIDE, verified=WIDE, barrier=7)) == steps.Finalize(7)


def test_standbys_unreachable_and_fenced_do_nothing() -> None:
    assert isinstance(steps.next_step(JOINT, 7, "pg0", local(name="pg1", primary=False)), steps.Idle)
    assert isinstance(steps.next_step(JOINT, 7, "pg0", local(primary=None)), steps.Idle)
    fenced = steps.next_step(JOINT, 7, "pg1", local())
    assert isinstance(fenced, steps.Fenced) and "term names pg1" in fenced.reason


def test_stable_and_in_force_admits_or_idles() -> None:
    s = "ANY 1 (pg1, pg2)"
    assert isinstance(steps.next_step(STABLE, 3, "pg0", local(setting=s, verified=s)), steps.Idle)
    m = Member("pg9")
    assert steps.next_step(STABLE, 3, "pg0", local(setting=s, verified=s), m) == steps.Admit(m)


def test_admission_needs_caught_up_for_long_enough_and_a_stable_ruleset() -> None:
    cand = {"pg9": steps.Candidate(Member("pg9"), True, 100), "pg8": steps.Candidate(Member("pg8"), True, 10**9)}
    since, who = steps.admission(STABLE, cand, {}, 100.0, max_lag=1000, stable_for=5, anyone=True)
    assert since == {"pg9": 100.0} and who is None  # pg8 is too far behind
    since, who = steps.admission(STABLE, cand, since, 106.0, max_lag=1000, stable_for=5, anyone=True)
    assert who == Member("pg9")
    _, who = steps.admission(JOINT, cand, since, 106.0, max_lag=1000, stable_for=5, anyone=True)
    assert who is None  # one change at a time
    lagging = {"pg9": steps.Candidate(Member("pg9"), True, 5000)}
    since, who = steps.admission(STABLE, lagging, since, 107.0, max_lag=1000, stable_for=5, anyone=True)
    assert since == {} and who is None  # falling behind restarts the clock
    members = {"pg1": steps.Candidate(Member("pg1"), True, 0)}
    assert steps.admission(STABLE, members, {}, 0.0, max_lag=1000, stable_for=0, anyone=True) == ({}, None)
    assert steps.admission(STABLE, cand, {}, 0.0, max_lag=10**10, stable_for=0) == ({}, None)  # auto_admit off


FOUR = core.initial(Rule(AnyK(1), tuple(Member(n) for n in ("pg0", "pg1", "pg2", "pg3"))), "pg1", changed_by="", now="")


def test_healing_benches_a_member_that_stopped_streaming_and_admits_it_again_once_caught_up() -> None:
    since, bench = steps.healing(FOUR, "pg1", ["pg2", "pg3"], {}, 100.0, after=30)
    assert since == {"pg0": 100.0} and bench is None  # the old primary: not streaming since now
    since, bench = steps.healing(FOUR, "pg1", ["pg2", "pg3"], since, 131.0, after=30)
    assert bench == steps.Bench("pg0", "not streaming for 31s")
    assert steps.healing(FOUR, "pg1", ["pg0", "pg2", "pg3"], since, 131.0, after=30) == ({}, None)  # it came back
    assert steps.healing(FOUR, "pg1", ["pg2", "pg3"], since, 131.0, after=0)[1] is None  # healing off
    assert steps.healing(FOUR, "pg1", ["pg2", "pg3"], since, 131.0, after=30, forced=True)[1] is None
    joint = core.propose(FOUR, core.SetPolicy(AnyK(2)), "pg1", changed_by="", now="")
    assert steps.healing(joint, "pg1", ["pg2", "pg3"], since, 131.0, after=30)[1] is None  # one change at a time

    benched = core.propose(FOUR, core.RemoveMember("pg0", bench=True, why="not streaming for 31s"), "pg1",
                           changed_by="pg1", now="")  # fmt: skip
    assert benched.reason == "bench pg0 (not streaming for 31s)" and benched.rule.member("pg0") is None
    stable = core.finalize(benched, changed_by="pg1", now="")
    assert [m.name for m in stable.benched] == ["pg0"]
    back = {"pg0": steps.Candidate(Member("pg0", "10.9.9.9"), True, 0)}
    since, who = steps.admission(stable, back, {}, 200.0, max_lag=1000, stable_for=5)
    assert who is None and since == {"pg0": 200.0}  # benched members come back without auto_admit
    _, who = steps.admission(stable, back, since, 206.0, max_lag=1000, stable_for=5)
    assert who == Member("pg0")  # as the bench records it
    readmitted = core.propose(stable, core.AddMember(Member("pg0")), "pg1", changed_by="pg1", now="")
    assert readmitted.benched == () and readmitted.rule.member("pg0") is not None


def test_healing_never_goes_below_the_policys_k() -> None:
    two = core.initial(Rule(AnyK(2), tuple(Member(n) for n in ("pg0", "pg1", "pg2"))), "pg0", changed_by="", now="")
    since, _ = steps.healing(two, "pg0", ["pg1"], {}, 0.0, after=1)
    assert steps.healing(two, "pg0", ["pg1"], since, 10.0, after=1)[1] is None  # any 2 needs both standbys


def test_removing_a_benched_member_forgets_it_without_a_joint_phase() -> None:
    benched = core.finalize(
        core.propose(FOUR, core.RemoveMember("pg0", bench=True), "pg1", changed_by="", now=""), changed_by="", now=""
    )
    forgot = core.propose(benched, core.RemoveMember("pg0"), "pg1", changed_by="sre", now="")
    assert forgot.phase == "stable" and forgot.benched == () and forgot.rule == benched.rule
    assert forgot.reason == "forget pg0 (benched)" and forgot.version == benched.version + 1
    assert core.from_record(core.to_record(benched)) == benched


def test_desired_is_refused_to_a_node_the_term_does_not_name() -> None:
    assert steps.desired(JOINT, 7, "pg0", "pg0") == TARGET
    with pytest.raises(RefusedError, match="names pg0, not pg1"):
        steps.desired(JOINT, 7, "pg0", "pg1")


def test_barrier_proven_needs_k_of_the_listed_standbys() -> None:
    two = steps.Desired(9, "ANY 2 (pg1, pg2, pg3)", frozenset({"pg1", "pg2", "pg3"}), 2)
    assert not steps.barrier_proven(two, ["pg1"])
    assert not steps.barrier_proven(two, ["pg1", "pg4"])  # pg4 is not listed: it does not count
    assert steps.barrier_proven(two, ["PG1", "pg3"])  # names match case-insensitively, as PostgreSQL does
