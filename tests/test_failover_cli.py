"""`pgcohort gate` and `pgcohort failover` on real PostgreSQL and etcd: exit codes, reasons, the override."""

from __future__ import annotations

import subprocess

import pytest

from tests.race import acked_write, create_ledger, ledger_ids
from tests.stack import BIN, Stack

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def stack(running_stack: Stack) -> Stack:
    create_ledger(running_stack.pg.nodes["pg0"].dsn)
    return running_stack


def pgcohort(st: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**st.sidecars["pg1"].env, "PGCOHORT_ACTOR": "sre"}
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=120)


def in_recovery(st: Stack, name: str) -> bool:
    import psycopg

    with psycopg.connect(st.pg.nodes[name].dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


def test_gate_records_the_term_without_promoting(stack: Stack) -> None:
    st = stack
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)
    st.sidecars["pg0"].kill()
    st.pg.crash(st.pg.nodes["pg0"])
    out = pgcohort(st, "gate", "--candidate", "pg2")
    assert out.returncode == 0, out.stderr
    assert "allowed: promote pg2" in out.stdout and "pg2 may now be promoted" in out.stdout
    assert st.store().read_both()[1].term.primary == "pg2"
    assert in_recovery(st, "pg2")  # the gate decides; the HA manager promotes
    # pg2 was never promoted: its term gives no authority, and a gate for pg3 reasons from pg0 again
    again = pgcohort(st, "gate", "--candidate", "pg3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reasoned from pg0, the last primary seen running: term 2 named pg2" in again.stdout, again.stdout
    assert st.store().read_both()[1].term.primary == "pg3"


def test_refused_failover_then_the_recorded_override(stack: Stack) -> None:
    st = stack
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)
    st.sidecars["pg0"].kill()
    st.sidecars["pg3"].kill()
    st.pg.crash(st.pg.nodes["pg3"])
    st.pg.crash(st.pg.nodes["pg0"])
    term_before = st.store().read_both()[1]
    out = pgcohort(st, "failover")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "needs 3 of its 3 standbys surveyed, reached 2: reach 1 more" in out.stderr
    assert "unreachable: pg3" in out.stderr and "No term was written" in out.stderr
    assert st.store().read_both()[1] == term_before
    assert in_recovery(st, "pg1") and in_recovery(st, "pg2")

    forced = pgcohort(st, "failover", "--allow-data-loss")
    assert forced.returncode == 0, forced.stderr
    assert "FORCED: forced with allow-data-loss" in forced.stdout
    term = st.store().read_both()[1].term
    assert term.term == 2 and term.forced.startswith("forced with allow-data-loss") and term.decided_by == "sre"
    assert [t.forced != "" for _, t in st.store().term_history()] == [False, True]  # the audit log says so
    assert not in_recovery(st, term.primary)
    assert 1 in ledger_ids(st.pg.nodes[term.primary].dsn)


def test_after_a_failover_the_survivors_follow_the_new_primary_and_commits_are_acknowledged(stack: Stack) -> None:
    """Without the repoint, the new primary's `ANY 1 (...)` would wait forever for standbys
    the survey revoked."""
    import psycopg

    st = stack
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)
    st.sidecars["pg0"].kill()
    st.pg.crash(st.pg.nodes["pg0"])
    out = pgcohort(st, "failover")
    assert out.returncode == 0, out.stderr
    new = st.store().read_both()[1].term.primary
    survivors = sorted({"pg1", "pg2", "pg3"} - {new})
    assert f"following {new} again: {', '.join(survivors)}" in out.stdout, out.stdout

    def streaming_from_new() -> bool:
        with psycopg.connect(st.pg.nodes[new].dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'").fetchall()
        return sorted(r[0] for r in rows) == survivors

    st.wait("the survivors streaming from the new primary", streaming_from_new, 30)
    st.wait("the new primary's own rule applied", lambda: acked_write(st.pg.nodes[new].dsn, 2, timeout=5), 40)
    for name in survivors:
        with psycopg.connect(st.pg.nodes[name].dsn, autocommit=True) as conn:
            kept = conn.execute("SELECT count(*) FROM pg_file_settings WHERE name = 'pgcohort.primary_conninfo'")
            row = kept.fetchone()
            assert row is not None and row[0] == 0, f"{name} still keeps the revoked conninfo"


def test_the_pre_promote_gate_vetoes_while_the_old_primary_still_runs(stack: Stack) -> None:
    """An HA manager's hook asking to promote pg1 while pg0 still accepts writes: pg0 is not
    fenced, so pg1 could miss what pg0 acknowledges next. Vetoed, and no term is written."""
    st = stack
    term_before = st.store().read_both()[1]
    out = pgcohort(st, "gate", "--candidate", "pg1")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "pg0, the last primary seen running (term 1), still runs as a primary" in out.stderr, out.stderr
    assert "not fenced" in out.stderr
    assert st.store().read_both()[1] == term_before
    assert in_recovery(st, "pg1")
