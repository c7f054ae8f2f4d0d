"""One named weakening per safety rule of docs/PROTOCOL.md, and the real-server tests that claim to catch it.

Each patch is an exact search-and-replace in a scratch copy of ``plugin/`` or ``adapters/``.
A patch whose ``old`` text is not found fails the run (a refactor must carry its patches
along, never silently drop them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    rule: str  # the safety rule of docs/PROTOCOL.md it breaks
    path: str  # in the checkout
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids, run against real servers


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "apply-before-commit",
        "a new member counts only after its propose commits",
        "plugin/sidecar.py",
        "            done = protocol.propose(self.store, core.AddMember(member), actor=self.settings.name)",
        "            with self.node.setting_lock() as w:  # MUTATION: enforce the candidate before the commit\n"
        "                snap, term = self.store.read_both()\n"
        "                w.write(steps.desired(core.propose(snap.ruleset, core.AddMember(member), term.term.primary,"
        " changed_by='', now=''), snap.revision, term.term.primary, self.settings.name))\n"
        "            time.sleep(1.5)\n"
        "            done = protocol.propose(self.store, core.AddMember(member), actor=self.settings.name)",
        ("tests/test_sidecar.py::test_auto_admit_brings_a_caught_up_standby_in",),
    ),
    Mutation(
        "finalize-without-barrier",
        "finalize only after a barrier taken after this revision's apply",
        "plugin/core/steps.py",
        "        if local.barrier != revision:\n            return Barrier(target)",
        "        if False:  # MUTATION\n            return Barrier(target)",
        ("tests/test_sidecar.py::test_add_is_enforced_only_after_commit_and_finalized_after_barrier",),
    ),
    Mutation(
        "barrier-reuse",
        "a barrier belongs to one revision and one apply",
        "adapters/postgres.py",
        '        if b is None or (b.revision, b.epoch) != (revision, self._epoch) or "error" in b.result:',
        '        if b is None or "error" in b.result:  # MUTATION: reuse whatever barrier is there',
        ("tests/test_postgres.py::test_a_barrier_is_never_reused_across_revisions",),
    ),
    Mutation(
        "barrier-not-proven",
        "finalize only once K members of the new electorate flushed the barrier",
        "plugin/sidecar.py",
        "        while not steps.barrier_proven(target, acked := self.node.acknowledged(lsn)):",
        "        acked = self.node.acknowledged(lsn)\n"
        "        while False:  # MUTATION: trust the release, do not check who flushed it",
        ("tests/test_apply.py::test_a_k_only_change_is_finalized_only_when_k_standbys_hold_the_barrier",),
    ),
    Mutation(
        "no-lock",
        "writes of the setting are serialised, rendered from a read inside the lock",
        "adapters/postgres.py",
        '                conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))',
        '                conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))  # MUTATION: no waiting',
        ("tests/test_apply.py::test_two_writers_never_regress_the_setting",),
    ),
    Mutation(
        "read-before-lock",
        "writes of the setting are serialised, rendered from a read inside the lock",
        "plugin/sidecar.py",
        "        with self.node.setting_lock() if primary else contextlib.nullcontext() as writer:\n"
        "            locked = time.monotonic()\n"
        "            snap, term = self.store.read_both()\n",
        "        snap, term = self.store.read_both()  # MUTATION: read before the lock\n"
        "        with self.node.setting_lock() if primary else contextlib.nullcontext() as writer:\n"
        "            locked = time.monotonic()\n",
        ("tests/test_apply.py::test_two_writers_never_regress_the_setting",),
    ),
    Mutation(
        "term-without-compares",
        "a term is recorded only if neither the ruleset nor the term moved since the survey",
        "plugin/store/records.py",
        "        compare = [\n            mod_equals(self.ruleset_key, ruleset_revision),\n"
        "            mod_equals(self.term_key, term_revision),\n"
        "            mod_equals(self.confirmed_key, based_on.confirmation_revision),\n        ]",
        "        compare = []  # MUTATION",
        (
            "tests/test_race.py::test_seed_race_gated_keeps_the_acknowledged_write",
            "tests/test_race.py::test_two_orchestrators_at_once_exactly_one_promotes",
        ),
    ),
    Mutation(
        "short-survey",
        "a failover surveys |E| - K + 1 members of every active rule's electorate",
        "plugin/core/failover.py",
        "    return electorate - acks + 1",
        "    return electorate - acks  # MUTATION",
        (
            "tests/test_faults.py::test_a_failover_in_the_joint_phase_keeps_every_write"
            "[add, one below |E|-K+1 of the new rule]",
            "tests/test_faults.py::test_the_suite_sees_a_loss_on_the_naive_path",
        ),
    ),
    Mutation(
        "joint-checks-one-rule",
        "in the joint phase a failover satisfies both rules",
        "plugin/core/failover.py",
        "    for rule in ruleset.active_rules():\n        e = tuple(m.name for m in rule.electorate(old_primary))",
        "    for rule in ruleset.active_rules()[:1]:  # MUTATION: the new rule only\n"
        "        e = tuple(m.name for m in rule.electorate(old_primary))",
        (
            "tests/test_faults.py::test_a_failover_in_the_joint_phase_keeps_every_write"
            "[remove, one below |E|-K+1 of the old rule only]",
            "tests/test_race.py::test_removal_race_with_the_leaving_member_down_is_refused_under_the_old_rule",
        ),
    ),
    Mutation(
        "any-reachable-candidate",
        "the candidate holds the highest surveyed position",
        "plugin/core/failover.py",
        "        best = [n for n in eligible if counted[n] == top]",
        "        best = eligible  # MUTATION: any reachable eligible member",
        ("tests/test_race.py::test_seed_race_gated_keeps_the_acknowledged_write",),
    ),
    Mutation(
        "second-primary-surveyed",
        "a member that is not in recovery is never surveyed as a standby",
        "plugin/gate.py",
        "                primaries[name] = e.position",
        "                positions[name] = e.position  # MUTATION: surveyed as a standby",
        (
            "tests/test_faults.py::test_a_failover_in_the_joint_phase_keeps_every_write[a second primary beside the old one]",
        ),
    ),
    Mutation(
        "unfenced-old-primary",
        "the pre-promote gate vetoes while the old primary still answers as a primary",
        "plugin/gate.py",
        "        if seen is not None and seen.primary:",
        "        if False:  # MUTATION: the old primary is not probed",
        ("tests/test_failover_cli.py::test_the_pre_promote_gate_vetoes_while_the_old_primary_still_runs",),
    ),
    Mutation(
        "record-written-behind-the-protocol",
        "act only on a ruleset whose version is etcd's write count of its key (no stale or forged record)",
        "plugin/store/records.py",
        '        check_written_by_protocol(rs.version, int(kv.get("version", 0)), "version", where)',
        "        pass  # MUTATION: trust whatever the key holds",
        ("tests/test_bad_records.py::test_bad_records_are_refused_and_the_last_good_setting_stays",),
    ),
    Mutation(
        "ruleset-and-term-unchecked",
        "act only on a ruleset every active rule of which the term's primary can enforce",
        "plugin/store/records.py",
        '        check_pair(snap.ruleset, now.term, f"{self.root} (revision {snap.revision})")\n        return snap, now',
        "        return snap, now  # MUTATION: no check across the two records",
        ("tests/test_bad_records.py::test_bad_records_are_refused_and_the_last_good_setting_stays",),
    ),
    Mutation(
        "reference-unconfirmed-term",
        "a failover reasons from the last confirmed term's primary, not from a term whose primary never ran",
        "plugin/core/term.py",
        "    if confirmation is None:\n        return term.primary\n    return confirmation.primary\n",
        "    return term.primary  # MUTATION: the current term's primary, confirmed or not (pgcohort 0.4)\n",
        ("tests/test_gate_rules.py::test_a_term_whose_primary_never_ran_gives_no_authority",),
    ),
    Mutation(
        "own-term-unconfirmed",
        "only a confirmed term lets its primary take its leader key back without a survey",
        "plugin/gate.py",
        "    if candidate == term.term.primary and (term.confirmed or term.term.forced):\n",
        "    if candidate == term.term.primary:  # MUTATION: any term naming it will do\n",
        ("tests/test_gate_rules.py::test_an_unconfirmed_term_gives_its_node_no_right_to_take_the_key_back",),
    ),
    Mutation(
        "count-without-fence",
        "a voter's position counts only once it stopped receiving (fenced), on Patroni as on plain PostgreSQL",
        "adapters/postgres.py",
        '        self._query("revoke (clear primary_conninfo)", "ALTER SYSTEM SET primary_conninfo = \'\'")\n',
        "        return self.held()  # MUTATION: read the position of a standby that still streams\n",
        (
            "tests/test_gate_rules.py::"
            "test_writes_on_the_old_primary_during_a_failover_are_never_acknowledged_behind_the_survey",
        ),
    ),
    Mutation(
        "fence-kept-on-veto",
        "a refused gate lifts its fences where the HA manager repoints standbys itself (Patroni)",
        "plugin/gate.py",
        "            failed = release(snap.ruleset, connect, found.positions)\n",
        "            failed: dict[str, str] = {}  # MUTATION: the fences stay\n",
        ("tests/test_gate_rules.py::test_a_refused_gate_lifts_its_fences_beside_patroni",),
    ),
    Mutation(
        "promote-without-the-rule",
        "a member is promoted with the rule rendered for it already in force",
        "plugin/gate.py",
        "        node.promote(setting=setting)\n",
        "        node.promote()  # MUTATION: whatever setting the standby had\n",
        ("tests/test_gate_rules.py::test_the_new_primary_acknowledges_nothing_before_its_standbys_hold_it",),
    ),
    Mutation(
        "position-from-processes",
        "a voter's position is the end of valid WAL it holds on disk, not what its processes report",
        "adapters/postgres.py",
        "        return Position(end, tli)\n",
        "        return Position(self.observe().lsn, tli)  # MUTATION: max(receive, replay) (pgcohort 0.4)\n",
        (
            "tests/test_durable_position.py::"
            "test_a_restarted_standby_with_delayed_replay_is_counted_at_what_it_holds[durable end of WAL]",
        ),
    ),
    Mutation(
        "positions-across-timelines",
        "positions count on the reference primary's timeline; WAL on a timeline it does not contain is refused",
        "plugin/core/failover.py",
        "    if reference is None:\n        timelines = sorted({p.timeline for p in positions.values()})\n",
        "    return {n: p.lsn for n, p in positions.items()}, {}  # MUTATION: raw LSNs, whatever the timeline\n"
        "    if reference is None:\n        timelines = sorted({p.timeline for p in positions.values()})\n",
        ("tests/test_gate_rules.py::test_a_promotion_nobody_confirmed_shows_in_the_timelines_and_is_refused",),
    ),
)
