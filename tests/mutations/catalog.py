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
        "plugin/pgcohort/sidecar/loop.py",
        '                self.actions.propose(core.AddMember(member), f"admitted {member.name}")',
        "                with self.node.setting_lock() as w:  # MUTATION: enforce the candidate before the commit\n"
        "                    snap, term = self.store.read_both()\n"
        "                    w.write(steps.desired(core.propose(snap.ruleset, core.AddMember(member), term.term.primary,"
        " changed_by='', now=''), snap.revision, term.term.primary, self.settings.name))\n"
        "                time.sleep(1.5)\n"
        '                self.actions.propose(core.AddMember(member), f"admitted {member.name}")',
        ("tests/test_sidecar.py::test_auto_admit_brings_a_caught_up_standby_in",),
    ),
    Mutation(
        "finalize-without-barrier",
        "finalize only after a barrier taken after this revision's apply",
        "plugin/pgcohort/core/steps.py",
        "        if local.barrier != revision:\n            return Barrier(target)",
        "        if False:  # MUTATION\n            return Barrier(target)",
        ("tests/test_sidecar.py::test_add_is_enforced_only_after_commit_and_finalized_after_barrier",),
    ),
    Mutation(
        "barrier-reuse",
        "a barrier belongs to one revision and one apply",
        "plugin/pgcohort/postgres/barrier.py",
        '        if b is None or (b.revision, b.epoch) != (revision, epoch) or "error" in b.result:',
        '        if b is None or "error" in b.result:  # MUTATION: reuse whatever barrier is there',
        ("tests/test_postgres.py::test_a_barrier_is_never_reused_across_revisions",),
    ),
    Mutation(
        "barrier-not-proven",
        "finalize only once K members of the new electorate flushed the barrier",
        "plugin/pgcohort/sidecar/actions.py",
        "        while not steps.barrier_proven(target, acked := self.node.acknowledged(lsn)):",
        "        acked = self.node.acknowledged(lsn)\n"
        "        while False:  # MUTATION: trust the release, do not check who flushed it",
        ("tests/test_apply.py::test_a_k_only_change_is_finalized_only_when_k_standbys_hold_the_barrier",),
    ),
    Mutation(
        "no-lock",
        "writes of the setting are serialised, rendered from a read inside the lock",
        "plugin/pgcohort/postgres/setting.py",
        '                conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))',
        '                conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))  # MUTATION: no waiting',
        ("tests/test_apply.py::test_two_writers_never_regress_the_setting",),
    ),
    Mutation(
        "read-before-lock",
        "writes of the setting are serialised, rendered from a read inside the lock",
        "plugin/pgcohort/sidecar/loop.py",
        "        with self.node.setting_lock() if primary else contextlib.nullcontext() as writer:\n"
        "            locked = time.monotonic()\n"
        "            snap, term = self.store.read_both()\n",
        "        snap, term = self.store.read_both()  # MUTATION: read before the lock\n"
        "        with self.node.setting_lock() if primary else contextlib.nullcontext() as writer:\n"
        "            locked = time.monotonic()\n",
        ("tests/test_apply.py::test_two_writers_never_regress_the_setting",),
    ),
    Mutation(
        "term-without-ruleset-compare",
        "a term is recorded only if the ruleset did not move since the survey",
        "plugin/pgcohort/store/records.py",
        "            mod_equals(self.ruleset_key, ruleset_revision),\n            mod_equals(self.term_key, term_revision),\n",
        "            mod_equals(self.term_key, term_revision),  # MUTATION: the ruleset may have moved\n",
        (
            "tests/test_compares.py::test_a_term_decided_on_a_stale_ruleset_is_refused",
            "tests/test_race.py::test_seed_race_gated_keeps_the_acknowledged_write",
        ),
    ),
    Mutation(
        "term-without-term-compare",
        "a term is recorded only if no other term was committed since the survey (one promotion per term)",
        "plugin/pgcohort/store/records.py",
        "            mod_equals(self.ruleset_key, ruleset_revision),\n            mod_equals(self.term_key, term_revision),\n",
        "            mod_equals(self.ruleset_key, ruleset_revision),  # MUTATION: another term may have landed\n",
        (
            "tests/test_store.py::test_term_cas_compares_ruleset_and_term",
            "tests/test_race.py::test_two_orchestrators_at_once_exactly_one_promotes",
        ),
    ),
    Mutation(
        "term-without-confirmation-compare",
        "a term is recorded only if no confirmation landed since the survey (it reasoned from the right primary)",
        "plugin/pgcohort/store/records.py",
        "            mod_equals(self.term_key, term_revision),\n"
        "            mod_equals(self.confirmed_key, based_on.confirmation_revision),\n",
        "            mod_equals(self.term_key, term_revision),  # MUTATION: a confirmation may have landed\n",
        ("tests/test_compares.py::test_a_term_decided_before_a_confirmation_is_refused",),
    ),
    Mutation(
        "short-survey",
        "a failover surveys |E| - K + 1 members of every active rule's electorate",
        "plugin/pgcohort/core/failover.py",
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
        "plugin/pgcohort/core/failover.py",
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
        "plugin/pgcohort/core/failover.py",
        "        best = [n for n in eligible if counted[n] == top]",
        "        best = eligible  # MUTATION: any reachable eligible member",
        ("tests/test_race.py::test_seed_race_gated_keeps_the_acknowledged_write",),
    ),
    Mutation(
        "second-primary-surveyed",
        "a member that is not in recovery is never surveyed as a standby",
        "plugin/pgcohort/gate.py",
        "                primaries[name] = e.position",
        "                positions[name] = e.position  # MUTATION: surveyed as a standby",
        (
            "tests/test_faults.py::test_a_failover_in_the_joint_phase_keeps_every_write[a second primary beside the old one]",
        ),
    ),
    Mutation(
        "unfenced-old-primary",
        "the pre-promote gate vetoes while the old primary still answers as a primary",
        "plugin/pgcohort/gate.py",
        "        if seen is not None and seen.primary:",
        "        if False:  # MUTATION: the old primary is not probed",
        ("tests/test_failover_cli.py::test_the_pre_promote_gate_vetoes_while_the_old_primary_still_runs",),
    ),
    Mutation(
        "record-written-behind-the-protocol",
        "act only on a ruleset whose version is etcd's write count of its key (no stale or forged record)",
        "plugin/pgcohort/store/records.py",
        '        check_written_by_protocol(rs.version, int(kv.get("version", 0)), "version", where)',
        "        pass  # MUTATION: trust whatever the key holds",
        ("tests/test_bad_records.py::test_bad_records_are_refused_and_the_last_good_setting_stays",),
    ),
    Mutation(
        "ruleset-and-term-unchecked",
        "act only on a ruleset every active rule of which the term's primary can enforce",
        "plugin/pgcohort/store/records.py",
        '        check_pair(snap.ruleset, now.term, f"{self.root} (revision {snap.revision})")\n        return snap, now',
        "        return snap, now  # MUTATION: no check across the two records",
        ("tests/test_bad_records.py::test_bad_records_are_refused_and_the_last_good_setting_stays",),
    ),
    Mutation(
        "reference-unconfirmed-term",
        "a failover reasons from the last confirmed term's primary, not from a term whose primary never ran",
        "plugin/pgcohort/core/term.py",
        "    if confirmation is None:\n        return term.primary\n    return confirmation.primary\n",
        "    return term.primary  # MUTATION: the current term's primary, confirmed or not (pgcohort 0.4)\n",
        ("tests/test_gate_rules.py::test_a_term_whose_primary_never_ran_gives_no_authority",),
    ),
    Mutation(
        "own-term-unconfirmed",
        "only a confirmed term lets its primary take its leader key back without a survey",
        "plugin/pgcohort/gate.py",
        "    if candidate == term.term.primary and (term.confirmed or term.term.forced):\n",
        "    if candidate == term.term.primary:  # MUTATION: any term naming it will do\n",
        ("tests/test_gate_rules.py::test_an_unconfirmed_term_gives_its_node_no_right_to_take_the_key_back",),
    ),
    Mutation(
        "count-without-fence",
        "a voter's position counts only once it stopped receiving (fenced), on Patroni as on plain PostgreSQL",
        "plugin/pgcohort/postgres/fence.py",
        '    s.query("revoke (clear primary_conninfo)", "ALTER SYSTEM SET primary_conninfo = \'\'")\n',
        "    return held(s)  # MUTATION: read the position of a standby that still streams\n",
        (
            "tests/test_gate_rules.py::"
            "test_writes_on_the_old_primary_during_a_failover_are_never_acknowledged_behind_the_survey",
        ),
    ),
    Mutation(
        "fence-kept-on-veto",
        "a refused gate lifts its fences where the HA manager repoints standbys itself (Patroni)",
        "plugin/pgcohort/gate.py",
        "            failed = release(snap.ruleset, connect, found.positions)\n",
        "            failed: dict[str, str] = {}  # MUTATION: the fences stay\n",
        ("tests/test_gate_rules.py::test_a_refused_gate_lifts_its_fences_beside_patroni",),
    ),
    Mutation(
        "promote-without-the-rule",
        "a member is promoted with the rule rendered for it already in force",
        "plugin/pgcohort/gate.py",
        "        node.promote(setting=setting)\n",
        "        node.promote()  # MUTATION: whatever setting the standby had\n",
        ("tests/test_gate_rules.py::test_the_new_primary_acknowledges_nothing_before_its_standbys_hold_it",),
    ),
    Mutation(
        "position-from-processes",
        "a voter's position is the end of valid WAL it holds on disk, not what its processes report",
        "plugin/pgcohort/postgres/fence.py",
        "    return Position(end, tli)\n",
        "    ((received, replayed),) = s.query('read', 'SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text')\n"
        "    return Position(max(lsn(received) or 0, lsn(replayed) or 0), tli)  # MUTATION: what its processes report (0.4)\n",
        (
            "tests/test_durable_position.py::"
            "test_a_restarted_standby_with_delayed_replay_is_counted_at_what_it_holds[durable end of WAL]",
        ),
    ),
    Mutation(
        "positions-across-timelines",
        "positions count on the reference primary's timeline; WAL on a timeline it does not contain is refused",
        "plugin/pgcohort/core/failover.py",
        "    if reference is None:\n        timelines = sorted({p.timeline for p in positions.values()})\n",
        "    return {n: p.lsn for n, p in positions.items()}, {}  # MUTATION: raw LSNs, whatever the timeline\n"
        "    if reference is None:\n        timelines = sorted({p.timeline for p in positions.values()})\n",
        ("tests/test_gate_rules.py::test_a_promotion_nobody_confirmed_shows_in_the_timelines_and_is_refused",),
    ),
    # --- issue 29: every compare, every fail-closed path, every shortcut -----------------------------------
    Mutation(
        "init-without-absence-compares",
        "init creates a cluster only where none of its records exists",
        "plugin/pgcohort/store/records.py",
        "        return [absent(self.ruleset_key), absent(self.term_key), absent(self.confirmed_key)], success",
        "        return [absent(self.ruleset_key)], success  # MUTATION: a term or a confirmation may be there",
        ("tests/test_compares.py::test_init_refuses_where_any_of_the_records_exists",),
    ),
    Mutation(
        "commit-without-ruleset-compare",
        "a proposal or finalize commits only if the ruleset did not move since it was read",
        "plugin/pgcohort/store/records.py",
        "        compare = [mod_equals(self.ruleset_key, expected)]\n",
        "        compare = []  # MUTATION: whatever the ruleset is now\n",
        (
            "tests/test_compares.py::test_a_proposal_on_a_stale_ruleset_is_refused",
            "tests/test_store.py::test_two_concurrent_proposers_exactly_one_wins",
        ),
    ),
    Mutation(
        "commit-without-term-compare",
        "a proposal or finalize commits only if the term it was validated against did not move",
        "plugin/pgcohort/store/records.py",
        "            compare.append(mod_equals(self.term_key, term_revision))\n",
        "            pass  # MUTATION: a failover may have landed\n",
        (
            "tests/test_compares.py::test_a_change_validated_against_a_moved_term_is_refused",
            "tests/test_compares.py::test_a_finalize_read_before_a_failover_is_refused",
        ),
    ),
    Mutation(
        "confirm-without-term-compare",
        "a confirmation is recorded only for the current term",
        "plugin/pgcohort/store/records.py",
        "            mod_equals(self.term_key, based_on.revision),\n",
        "",
        ("tests/test_compares.py::test_a_confirmation_of_a_superseded_term_is_refused",),
    ),
    Mutation(
        "confirm-without-confirmation-compare",
        "a confirmation never goes back (no writer of it acts on a stale read)",
        "plugin/pgcohort/store/records.py",
        "            mod_equals(self.term_key, based_on.revision),\n"
        "            mod_equals(self.confirmed_key, based_on.confirmation_revision),\n",
        "            mod_equals(self.term_key, based_on.revision),  # MUTATION: over whatever confirmation\n",
        ("tests/test_compares.py::test_a_confirmation_never_goes_back",),
    ),
    Mutation(
        "restore-without-compares",
        "a restore writes only over the records it read",
        "plugin/pgcohort/store/repair.py",
        "    ok, _ = records.transport.txn(compare, success, [])\n",
        "    ok, _ = records.transport.txn([], success, [])  # MUTATION: over whatever is there now\n",
        ("tests/test_compares.py::test_a_restore_racing_a_writer_writes_nothing",),
    ),
    Mutation(
        "setting-without-ruleset-compare",
        "Patroni's configuration gets a setting only from the ruleset revision it was rendered from",
        "plugin/pgcohort/store/patroni.py",
        "        compare = [mod_equals(self.records.ruleset_key, ruleset_revision), mod_equals(self.key, config.revision)]",
        "        compare = [mod_equals(self.key, config.revision)]  # MUTATION: from any ruleset",
        ("tests/test_compares.py::test_a_setting_rendered_from_a_stale_ruleset_is_not_written",),
    ),
    Mutation(
        "setting-without-config-compare",
        "the setting is merged only into the Patroni configuration it was read from (edit-config is kept)",
        "plugin/pgcohort/store/patroni.py",
        "        compare = [mod_equals(self.records.ruleset_key, ruleset_revision), mod_equals(self.key, config.revision)]",
        "        compare = [mod_equals(self.records.ruleset_key, ruleset_revision)]  # MUTATION: over any config",
        ("tests/test_compares.py::test_a_setting_over_a_racing_edit_config_is_not_written",),
    ),
    Mutation(
        "adopt-without-config-compare",
        "an adoption switches Patroni's sync mode off only in the configuration it read",
        "plugin/pgcohort/store/patroni.py",
        "        compare.append(mod_equals(self.key, config.revision))\n",
        "        pass  # MUTATION: over any config\n",
        ("tests/test_compares.py::test_an_adoption_over_a_racing_edit_config_writes_nothing",),
    ),
    Mutation(
        "indeterminate-term-promotes",
        "a gate whose term write has no definite answer refuses (the hook exits non-zero)",
        "plugin/pgcohort/gate.py",
        "            rev = store.put_term(snap.revision, term, new_term)\n",
        "            try:\n"
        "                rev = store.put_term(snap.revision, term, new_term)\n"
        "            except __import__('pgcohort.errors').errors.IndeterminateError:  # MUTATION: as if committed\n"
        "                rev = Revision(0)\n",
        ("tests/test_gate_faults.py::test_the_gate_refuses_when_its_term_write_gets_no_answer",),
    ),
    Mutation(
        "unreachable-etcd-as-unmanaged",
        "etcd not answering is never taken for a cluster pgcohort does not manage",
        "plugin/pgcohort/commands.py",
        "        except NotInitializedError as e:\n",
        "        except (NotInitializedError, __import__('pgcohort.errors').errors.StoreUnavailableError) as e:  # MUTATION\n",
        ("tests/test_gate_faults.py::test_an_unreachable_etcd_is_never_taken_for_an_unmanaged_cluster",),
    ),
    Mutation(
        "etcd-requests-without-timeout",
        "every etcd request of the gate is bounded in time (Patroni's hook has no timeout of its own)",
        "plugin/pgcohort/store/transport.py",
        'timeout=timeout, api_path="/v3/"',
        'timeout=None, api_path="/v3/"  # MUTATION',
        ("tests/test_gate_faults.py::test_the_gate_refuses_while_etcd_does_not_answer[10 s network delay]",),
    ),
    # --- issue 24: an HA manager that promotes after the hook, and elects the same candidate again (repmgr) ---------
    Mutation(
        "steer-then-allow",
        "a gate that promoted another member never lets the HA manager promote its own candidate (the veto stands)",
        "plugin/pgcohort/gate.py",
        '    stuck = "".join(f"; {n} NOT repointed: {why}" for n, why in sorted(other.followers.items()))\n',
        "    return other  # MUTATION: allow the HA manager's candidate too, after promoting another member\n",
        ("tests/test_repmgr.py::test_gated_repmgr_vetoes_the_unsafe_candidate_promotes_the_member_holding_the_write",),
    ),
    Mutation(
        "hand-over-without-the-rule",
        "a candidate the HA manager promotes itself gets the rule rendered for it in force before the hook allows",
        "plugin/pgcohort/gate.py",
        "        node.prepare(setting)\n",
        "        pass  # MUTATION: the HA manager promotes it with whatever setting it holds\n",
        ("tests/test_repmgr.py::test_kill_9_of_the_primary_the_gate_allows_a_safe_candidate_and_nothing_is_lost",),
    ),
    Mutation(
        "shortcut-for-any-former-primary",
        "only the current term's primary takes its leader key back without a survey, not one of an earlier term",
        "plugin/pgcohort/gate.py",
        "    if candidate == term.term.primary and (term.confirmed or term.term.forced):\n",
        "    if candidate in {t.primary for _, t in store.term_history()} and (term.confirmed or term.term.forced):\n",
        ("tests/test_gate_rules.py::test_a_former_primary_is_surveyed_like_anyone",),
    ),
)
