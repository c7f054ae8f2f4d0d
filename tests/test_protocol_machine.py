"""A state machine over propose, apply, barrier, finalize, sidecar crashes and failover checks.

A pure model of one cluster: WAL positions, the rule the primary enforces, the ruleset, and
the primary's sidecar, which acts only through :func:`pgcohort.core.steps.next_step` (the
decisions the real sidecar makes). Writes are acknowledged by K standbys of the enforced
rule's electorate. After every step:

* the ruleset invariants hold (:func:`pgcohort.core.ruleset.check_invariants`);
* every acknowledged write is on at least K members of some active rule's electorate
  (the fact the failover rule's overlap argument needs);
* for a failover decided now, on any survey, an allowed candidate holds every
  acknowledged write.

A sidecar crash forgets what it verified and which barrier it committed, so every step
is also restarted from its interruption. The last test removes the barrier from the
sidecar's steps and shows the machine finds the loss.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from pgcohort.core import failover, steps
from pgcohort.core import ruleset as core
from pgcohort.core.rules import AnyK, Member, Rule
from pgcohort.errors import PgcohortError

NAMES = [f"m{i}" for i in range(6)]
PRIMARY = "m0"


class Cluster(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        rule0 = Rule(AnyK(1), tuple(Member(n) for n in NAMES[:3]))
        self.rs = core.initial(rule0, PRIMARY, changed_by="", now="")
        self.revision = 1
        # What the primary enforces: exactly what the sidecar's Apply step produced.
        self.enforced = steps.desired(self.rs, self.revision, PRIMARY, PRIMARY)
        self.head = 0
        self.pos = {n: 0 for n in NAMES[1:]}
        self.acked: list[int] = []
        self.verified: str | None = self.enforced.setting
        self.barrier: int | None = None

    def _ack(self, chooser: st.DataObject) -> None:
        """The primary commits at head+1; K of the standbys the enforced setting lists acknowledge."""
        ackers = chooser.draw(st.permutations(sorted(self.enforced.standbys)))[: self.enforced.acks]
        self.head += 1
        for n in ackers:
            self.pos[n] = self.head  # WAL is ordered: acknowledging L means holding all up to L

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        self._ack(data)
        self.acked.append(self.head)

    @rule(name=st.sampled_from(NAMES[1:]))
    def catch_up(self, name: str) -> None:
        self.pos[name] = self.head

    @rule(kind=st.sampled_from(["add", "remove", "policy"]), name=st.sampled_from(NAMES[1:]), k=st.integers(1, 3))
    def propose(self, kind: str, name: str, k: int) -> None:
        change: core.Change
        change = (
            core.AddMember(Member(name))
            if kind == "add"
            else core.RemoveMember(name)
            if kind == "remove"
            else core.SetPolicy(AnyK(k))
        )
        try:
            self.rs = core.propose(self.rs, change, PRIMARY, changed_by="", now="")
        except PgcohortError:
            return
        self.revision += 1

    @rule(data=st.data())
    def sidecar_step(self, data: st.DataObject) -> None:
        local = steps.Local(PRIMARY, True, self.enforced.setting, self.verified, self.barrier)
        step = steps.next_step(self.rs, self.revision, PRIMARY, local)
        if isinstance(step, steps.Apply):
            self.enforced = step.target
            self.verified = step.target.setting
        elif isinstance(step, steps.Barrier):
            self._ack(data)
            self.barrier = step.revision
        elif isinstance(step, steps.Finalize):
            self.rs = core.finalize(self.rs, changed_by="", now="")
            self.revision += 1

    @rule()
    def sidecar_crash(self) -> None:
        self.verified = None
        self.barrier = None

    @invariant()
    def ruleset_invariants(self) -> None:
        core.check_invariants(self.rs, PRIMARY)

    @invariant()
    def acknowledged_writes_are_covered(self) -> None:
        for w in self.acked:
            covered = any(
                sum(1 for m in r.electorate(PRIMARY) if self.pos[m.name] >= w) >= r.acks()
                for r in self.rs.active_rules()
            )
            assert covered, (
                f"write {w} is on too few members of every active rule: {self.rs.show()} positions {self.pos}"
            )

    @precondition(lambda self: bool(self.acked))
    @rule(data=st.data())
    def failover_now_keeps_every_acknowledged_write(self, data: st.DataObject) -> None:
        members = sorted({m.name for r in self.rs.active_rules() for m in r.cohort} - {PRIMARY})
        surveyed = data.draw(st.sets(st.sampled_from(members)))
        decision = failover.decide(self.rs, PRIMARY, {n: self.pos[n] for n in surveyed})
        if decision.allowed:
            assert decision.candidate is not None
            assert self.pos[decision.candidate] >= max(self.acked), f"{decision} loses writes up to {max(self.acked)}"


SETTINGS = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_protocol_state_machine() -> None:
    run_state_machine_as_test(Cluster, settings=SETTINGS)


def test_the_machine_finds_a_finalize_without_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the barrier from the sidecar's steps: finalizing right after apply must lose writes."""
    real = steps.next_step

    def no_barrier(
        ruleset: core.Ruleset, revision: int, term_primary: str, local: steps.Local, admit: Member | None = None
    ) -> steps.Step:
        step = real(ruleset, revision, term_primary, local, admit)
        return steps.Finalize(step.revision) if isinstance(step, steps.Barrier) else step

    monkeypatch.setattr(steps, "next_step", no_barrier)
    with pytest.raises(AssertionError, match="on too few members|loses writes"):
        run_state_machine_as_test(Cluster, settings=settings(SETTINGS, max_examples=2000, database=None))


def test_the_machine_finds_the_old_rule_rendered_in_the_joint_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render the previous rule while joint (the setting lags the committed rule): writes are lost."""
    real = steps.desired

    def stale(ruleset: core.Ruleset, revision: int, term_primary: str, name: str) -> steps.Desired:
        if ruleset.previous is not None:
            return real(core.Ruleset(ruleset.version, ruleset.previous), revision, term_primary, name)
        return real(ruleset, revision, term_primary, name)

    monkeypatch.setattr(steps, "desired", stale)
    with pytest.raises(AssertionError, match="on too few members|loses writes"):
        run_state_machine_as_test(Cluster, settings=settings(SETTINGS, max_examples=2000, database=None))
