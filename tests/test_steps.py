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
    since, who = steps.admission(STABLE, cand, {}, 100.0, max_lag=1000, stable_for=5)
    assert since == {"pg9": 100.0} and who is None  # pg8 is too far behind
    since, who = steps.admission(STABLE, cand, since, 106.0, max_lag=1000, stable_for=5)
    assert who == Member("pg9")
    _, who = steps.admission(JOINT, cand, since, 106.0, max_lag=1000, stable_for=5)
    assert who is None  # one change at a time
    lagging = {"pg9": steps.Candidate(Member("pg9"), True, 5000)}
    since, who = steps.admission(STABLE, lagging, since, 107.0, max_lag=1000, stable_for=5)
    assert since == {} and who is None  # falling behind restarts the clock
    members = {"pg1": steps.Candidate(Member("pg1"), True, 0)}
    assert steps.admission(STABLE, members, {}, 0.0, max_lag=1000, stable_for=0) == ({}, None)


def test_desired_is_refused_to_a_node_the_term_does_not_name() -> None:
    assert steps.desired(JOINT, 7, "pg0", "pg0") == TARGET
    with pytest.raises(RefusedError, match="names pg0, not pg1"):
        steps.desired(JOINT, 7, "pg0", "pg1")


def test_barrier_proven_needs_k_of_the_listed_standbys() -> None:
    two = steps.Desired(9, "ANY 2 (pg1, pg2, pg3)", frozenset({"pg1", "pg2", "pg3"}), 2)
    assert not steps.barrier_proven(two, ["pg1"])
    assert not steps.barrier_proven(two, ["pg1", "pg4"])  # pg4 is not listed: it does not count
    assert steps.barrier_proven(two, ["PG1", "pg3"])  # names match case-insensitively, as PostgreSQL does
