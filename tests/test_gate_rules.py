"""The gate's safety rules on real PostgreSQL 15 and etcd, each shown against the path without it.

* **A term whose primary never ran gives no authority.** The failover rule reasons from the
  last *confirmed* term's primary; a later term's node is surveyed like anyone.
* **An unconfirmed term gives its node no shortcut**: it takes its key back only if the
  survey allows it.
* **Fence before counting**: a voter's position is read only once it stopped receiving, so
  an old primary that still runs cannot have writes acknowledged behind the survey.
* **A refused gate lifts its fences** where the HA manager repoints standbys itself.
* **The new primary promotes with the rule in force**: no commit on it is acknowledged by
  fewer standbys than the rule asks, not even before its sidecar applies the rule.

Each test's unsafe path is the mutation of ``tests/mutations/catalog.py`` that removes the
rule (``tests.weakened``), run beside the real code where the test shows both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import psycopg
import pytest

from pgcohort import gate
from pgcohort.adapters import patroni
from pgcohort.core import steps
from pgcohort.core.failover import Position
from pgcohort.core.rules import Member
from pgcohort.errors import PgcohortError, PostgresUnreachableError, RefusedError
from pgcohort.seams import Node
from tests.fakes import DelegatingNode
from tests.race import Writer, acked_write, connect, create_ledger, ledger_ids, observe
from tests.stack import BIN, Stack
from tests.weakened import weakened

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def st() -> Iterator[Stack]:
    """pg0 primary, pg1 and pg2 standbys under ``any 1``, a sidecar beside each (pg0's confirms term 1)."""
    stack = Stack(cluster=f"rules{time.monotonic_ns() % 10**6}").start(standbys=2)
    try:
        create_ledger(stack.pg.nodes["pg0"].dsn)
        stack.wait("term 1 confirmed with its timeline", lambda: stack.store().read_both()[1].timeline is not None)
        yield stack
    finally:
        stack.close()


def cli(st: Stack, *args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**st.sidecars["pg1"].env, "PGCOHORT_ACTOR": "sre"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=120)


def in_recovery(st: Stack, name: str) -> bool:
    with psycopg.connect(st.pg.nodes[name].dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


def crash(st: Stack, name: str) -> None:
    st.sidecars[name].kill()
    st.pg.crash(st.pg.nodes[name])


def wal_receiver(st: Stack, name: str) -> int:
    pid = st.pg.nodes[name].proc
    assert pid is not None
    for child in subprocess.run(["pgrep", "-P", str(pid.pid)], capture_output=True, text=True).stdout.split():
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
            if b"walreceiver" in f.read():
                return int(child)
    raise AssertionError(f"{name} runs no WAL receiver")


def up(st: Stack, name: str) -> None:
    """Wait until ``name`` answers again (after a WAL receiver's SIGKILL restarted its whole server)."""

    def answers() -> bool:
        try:
            observe(st.member(name))
            return True
        except PgcohortError:
            return False

    st.wait(f"{name} answering", answers, 30)


def test_a_term_whose_primary_never_ran_gives_no_authority(st: Stack) -> None:
    """A gate commits term 2 for pg1 and pg1 is never promoted; pg0 is dead for good. Reasoning from
    pg1 (pgcohort 0.4) needs pg0 surveyed and refuses forever; reasoning from pg0, the last primary seen
    running, surveys pg1 like anyone and promotes with nothing lost."""
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)
    crash(st, "pg0")
    decided = cli(st, "gate", "--candidate", "pg1")
    assert decided.returncode == 0, decided.stdout + decided.stderr
    term = st.store().read_both()[1]
    assert term.term.primary == "pg1" and not term.confirmed and term.reference == "pg0"
    assert in_recovery(st, "pg1")  # the HA manager died before promoting

    with weakened("reference-unconfirmed-term") as today:
        refused = cli(st, "failover", pythonpath=today)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "failover from pg1 refused" in refused.stderr and "reach 1 more" in refused.stderr, refused.stderr
    assert "pg0" in refused.stderr  # the dead old primary holds the failover hostage

    done = cli(st, "failover")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reasoned from pg0, the last primary seen running: term 2 named pg1" in done.stdout, done.stdout
    new = st.store().read_both()[1].term.primary
    assert not in_recovery(st, new) and 1 in ledger_ids(st.pg.nodes[new].dsn)
    st.wait(f"{new}'s sidecar confirming term 3", lambda: st.store().read_both()[1].confirmed, 20)
    history = cli(st, "history", "--terms")
    assert "never seen running" in history.stdout, history.stdout  # term 2


def test_an_unconfirmed_term_gives_its_node_no_right_to_take_the_key_back(st: Stack) -> None:
    """Term 2 names pg1, never promoted; pg0 keeps running, its standbys are repointed to it, and write 2 is
    acknowledged by pg2 alone. When pg0 dies, pg1 must not take "its" key back without a survey: pg2 is ahead."""
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)
    store = st.store()
    outcome = gate.gate(store, connect, actor="a gate that dies", writer="t/1", candidate="pg1")
    assert outcome.term.primary == "pg1" and in_recovery(st, "pg1")
    for name in ("pg1", "pg2"):  # the HA manager puts the standbys back behind the running pg0
        node = connect(st.member(name))
        node.follow(st.member("pg0"))
        node.close()
    st.wait("pg1 and pg2 streaming from pg0", lambda: all(observe(st.member(n)).receiving for n in ("pg1", "pg2")))
    os.kill(wal_receiver(st, "pg1"), signal.SIGSTOP)
    assert acked_write(st.pg.nodes["pg0"].dsn, 2), "write 2 was not acknowledged (by pg2)"
    crash(st, "pg0")
    os.kill(wal_receiver(st, "pg1"), signal.SIGKILL)  # pg1 restarts without write 2's WAL in flight
    up(st, "pg1")

    refused = cli(st, "gate", "--candidate", "pg1")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "candidate pg1 is at" in refused.stderr and "behind pg2" in refused.stderr, refused.stderr
    assert 2 in ledger_ids(st.pg.nodes["pg2"].dsn)


class SlowToRepoint(DelegatingNode):
    """The promoted member answers ``promote`` only a second later (an HA manager busy elsewhere):
    the survivors are repointed that much later."""

    def promote(self, *, timeout: int = 60, setting: steps.Desired | None = None) -> None:
        super().promote(timeout=timeout, setting=setting)
        time.sleep(1.0)


def test_writes_on_the_old_primary_during_a_failover_are_never_acknowledged_behind_the_survey(st: Stack) -> None:
    """pg0 still runs (the orchestrator believes it dead) and a client keeps writing to it. Every write pg0
    acknowledged must be on the member promoted. Without the fence the standbys keep streaming from pg0 and
    acknowledge its writes after their positions were read; with it, pg0's commits wait for nobody."""
    st.sidecars["pg0"].kill()
    writer = Writer(st.pg.nodes["pg0"].dsn)
    st.wait("writes acknowledged before the failover", lambda: len(writer.acked) >= 5)
    outcome = gate.failover(st.store(), lambda m: SlowToRepoint(connect(m)), actor="orchestrator", writer="o/1")
    time.sleep(0.5)
    acked = writer.halt()
    held = ledger_ids(st.pg.nodes[outcome.candidate].dsn)
    assert acked <= held, f"acknowledged by pg0 but lost on {outcome.candidate}: {sorted(acked - held)}"


def test_a_refused_gate_lifts_its_fences_beside_patroni(st: Stack) -> None:
    """Beside Patroni the fence is ALTER SYSTEM values over Patroni's postgresql.conf: a refused gate resets
    them, so Patroni's own primary_conninfo applies again (here put where Patroni keeps it)."""
    for name in ("pg1", "pg2"):
        with psycopg.connect(st.pg.nodes[name].dsn, autocommit=True) as conn:
            row = conn.execute("SHOW primary_conninfo").fetchone()
            assert row is not None
            conn.execute("ALTER SYSTEM RESET primary_conninfo")
        with open(os.path.join(st.pg.nodes[name].data_dir, "postgresql.conf"), "a") as f:
            f.write(f"\nprimary_conninfo = '{row[0]}'\n")
        with psycopg.connect(st.pg.nodes[name].dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
    os.kill(wal_receiver(st, "pg1"), signal.SIGSTOP)
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)  # held by pg2 alone
    crash(st, "pg0")
    os.kill(wal_receiver(st, "pg1"), signal.SIGKILL)
    up(st, "pg1")
    with pytest.raises(RefusedError, match="behind pg2"):
        gate.gate(st.store(), patroni.connector("user=postgres dbname=postgres connect_timeout=2"),
                  actor="gate@pg1", writer="g/1", candidate="pg1")  # fmt: skip
    for name in ("pg1", "pg2"):
        with psycopg.connect(st.pg.nodes[name].dsn, autocommit=True) as conn:
            left = conn.execute(
                "SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'"
                " AND name IN ('primary_conninfo', 'restore_command')"
            ).fetchall()
            conninfo = conn.execute("SHOW primary_conninfo").fetchone()
        assert not left, f"the fence on {name} was left behind: {left}"
        assert conninfo is not None and str(st.pg.nodes["pg0"].port) in conninfo[0]


class WriteBeforeRepoint(DelegatingNode):
    """Before the first survivor follows the new primary, a client commits on the new primary."""

    seen: dict[str, bool] = {}

    def __init__(self, node: Node, new_primary_dsn: dict[str, str]) -> None:
        super().__init__(node)
        self.dsns = new_primary_dsn

    def follow(self, primary: Member) -> None:
        if "acked" not in self.seen:
            self.seen["acked"] = acked_write(self.dsns[primary.name], 1000, timeout=2.0)
        super().follow(primary)


def test_the_new_primary_acknowledges_nothing_before_its_standbys_hold_it(st: Stack) -> None:
    """Promoted with the rule already in force: a commit on the new primary before any survivor streams
    from it waits; without the setting it would be acknowledged by no standby at all."""
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)
    crash(st, "pg0")
    dsns = {n: node.dsn for n, node in st.pg.nodes.items()}
    WriteBeforeRepoint.seen = {}
    outcome = gate.failover(st.store(), lambda m: WriteBeforeRepoint(connect(m), dsns), actor="o", writer="o/1")
    assert WriteBeforeRepoint.seen == {"acked": False}, "a commit was acknowledged before any standby held it"
    assert 1 in ledger_ids(st.pg.nodes[outcome.candidate].dsn)


class Unreachable(DelegatingNode):
    def revoke(self, *, timeout: float = 10.0, candidate: Member | None = None) -> Position:
        raise PostgresUnreachableError("unreachable from this gate (a partition)")


def test_a_promotion_nobody_confirmed_shows_in_the_timelines_and_is_refused() -> None:
    """``any 2`` over pg1..pg4. A gate that cannot reach pg4 decides pg1; pg1 is promoted, but its sidecar never
    records it; pg2 and pg3 follow pg1 and acknowledge write 100 on its new timeline, while pg0 keeps running and
    pg4, never fenced, keeps receiving pg0's unacknowledged WAL on the old one. When pg1 and pg0 are both gone,
    a failover reasoning from pg0 must not compare pg4's longer WAL with pg2's and pg3's as if they were one
    history: pg4 lacks write 100. Refused, until pg1's sidecar records what happened."""
    st = Stack(cluster=f"timelines{time.monotonic_ns() % 10**6}").start(standbys=4, policy=2)
    try:
        create_ledger(st.pg.nodes["pg0"].dsn)
        st.wait("term 1 confirmed with its timeline", lambda: st.store().read_both()[1].timeline is not None)
        assert acked_write(st.pg.nodes["pg0"].dsn, 1)
        st.sidecars["pg1"].kill()
        st.sidecars["pg0"].kill()
        outcome = gate.gate(
            st.store(),
            lambda m: Unreachable(connect(m)) if m.name == "pg4" else connect(m),
            actor="a gate cut off from pg4",
            writer="g/1",
            candidate="pg1",
        )
        assert outcome.term.primary == "pg1"
        promoted = connect(st.member("pg1"))
        promoted.promote(setting=steps.desired(st.store().read().ruleset, outcome.ruleset_revision, "pg1", "pg1"))
        promoted.close()
        for name in ("pg2", "pg3"):
            node = connect(st.member(name))
            node.follow(st.member("pg1"))
            node.close()
        assert acked_write(st.pg.nodes["pg1"].dsn, 100, timeout=20), "write 100 was not acknowledged on pg1"
        with psycopg.connect(st.pg.nodes["pg0"].dsn, autocommit=True) as conn:  # pg0's client, unacknowledged
            conn.execute("SET synchronous_commit = local")
            conn.execute("INSERT INTO ledger SELECT g, repeat('x', 200) FROM generate_series(1000, 20000) g")
        st.wait("pg4 receiving pg0's WAL", lambda: observe(st.member("pg4")).lsn > observe(st.member("pg2")).lsn)
        st.pg.crash(st.pg.nodes["pg1"])
        st.pg.crash(st.pg.nodes["pg0"])
        assert not st.store().read_both()[1].confirmed

        refused = cli(st, "failover")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "timeline" in refused.stderr and "no confirmation recorded" in refused.stderr, refused.stderr
        assert 100 in ledger_ids(st.pg.nodes["pg2"].dsn)
    finally:
        st.close()


def test_a_former_primary_is_surveyed_like_anyone(st: Stack) -> None:
    """pg0 was the primary of term 1; after a failover to pg1 (confirmed, running), a hook asking to promote pg0
    again gets no shortcut for having once been primary: pg1 still runs, so it is vetoed."""
    assert acked_write(st.pg.nodes["pg0"].dsn, 1)
    crash(st, "pg0")
    done = cli(st, "failover", "--candidate", "pg1")
    assert done.returncode == 0, done.stdout + done.stderr
    st.wait("pg1's term confirmed", lambda: st.store().read_both()[1].confirmed, 20)
    before = st.store().read_both()[1]
    again = cli(st, "gate", "--candidate", "pg0")
    assert again.returncode == 3, again.stdout + again.stderr
    assert "pg1, the last primary seen running (term 2), still runs as a primary" in again.stderr, again.stderr
    assert st.store().read_both()[1] == before


def test_a_term_forced_by_hand_lets_the_hook_promote_its_candidate(st: Stack) -> None:
    """The documented way to accept a loss under Patroni: record a forced term by hand, then the hook (Patroni's
    pre_promote) allows that candidate, and only that one."""
    crash(st, "pg0")
    crash(st, "pg2")  # too few members for a safe failover
    refused = cli(st, "gate", "--candidate", "pg1")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    forced = cli(st, "gate", "--candidate", "pg1", "--allow-data-loss")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "FORCED" in forced.stdout
    hook = cli(st, "gate", "--candidate", "pg1")
    assert hook.returncode == 0 and "forced by hand with --allow-data-loss" in hook.stdout, hook.stdout + hook.stderr
    other = cli(st, "gate", "--candidate", "pg2")
    assert other.returncode != 0
