"""A voter's position is what it holds on disk, not what its restarted processes report (real PostgreSQL 15).

pg1 holds the only copy of acknowledged write 2 and replays a day behind
(``recovery_min_apply_delay``); pg0 dies and pg1 restarts just before the failover. pg1's
receive position is gone with its WAL receiver and its replay position is before write 1's
commit, so ``max(receive, replay)`` (pgcohort 0.4) puts pg2, which never received write 2,
ahead, and promotes it: the write is lost although every rule was followed. The end of valid
WAL in pg1's pg_wal says pg1 holds write 2: pg1 is promoted and nothing is lost. (ClusterLabs
PAF issues #225 and #228 describe the same on Pacemaker.)
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

from pgcohort.core.failover import format_lsn
from tests.race import acked_write, create_ledger, ledger_ids, observe
from tests.stack import BIN, Stack
from tests.test_gate_rules import up
from tests.weakened import weakened

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def st() -> Iterator[Stack]:
    stack = Stack(cluster=f"durable{time.monotonic_ns() % 10**6}").start(standbys=2, sidecars=False)
    try:
        yield stack
    finally:
        stack.close()


def wal_receiver(st: Stack, name: str) -> int:
    proc = st.pg.nodes[name].proc
    assert proc is not None
    for child in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
            if b"walreceiver" in f.read():
                return int(child)
    raise AssertionError(f"{name} runs no WAL receiver")


def failover(st: Stack, pythonpath: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        **st.env_for(st.pg.nodes["pg1"], 0),
        "PGCOHORT_POSTGRES_MEMBER_OPTIONS": "user=postgres dbname=postgres connect_timeout=2",
        "PGCOHORT_ACTOR": "sre",
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([BIN, "failover"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("positions", ["durable end of WAL", "max(receive, replay) (pgcohort 0.4)"])
def test_a_restarted_standby_with_delayed_replay_is_counted_at_what_it_holds(st: Stack, positions: str) -> None:
    p, holder, other = (st.pg.nodes[n] for n in ("pg0", "pg1", "pg2"))
    with psycopg.connect(holder.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET recovery_min_apply_delay = '1d'")
        conn.execute("SELECT pg_reload_conf()")
    create_ledger(p.dsn)
    st.wait("pg1 and pg2 streaming", lambda: all(observe(st.member(n)).receiving for n in ("pg1", "pg2")))
    assert acked_write(p.dsn, 1)
    os.kill(wal_receiver(st, "pg2"), signal.SIGSTOP)
    assert acked_write(p.dsn, 2), "write 2 was not acknowledged (by pg1)"
    st.pg.crash(p)
    os.kill(wal_receiver(st, "pg2"), signal.SIGKILL)  # pg2 crash-restarts without write 2's WAL
    st.pg.stop(holder)  # pg1 restarts just before the failover
    st.pg.start(holder)
    seen = observe(st.member("pg1")).lsn
    up(st, "pg2")
    assert seen < observe(st.member("pg2")).lsn, "pg1's restarted processes do not understate it here"

    if positions.startswith("durable"):
        done = failover(st, None)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "allowed: promote pg1" in done.stdout, done.stdout
        assert {1, 2} <= ledger_ids(holder.dsn)
        print(f"\n  pg1 reported {format_lsn(seen)} after its restart; it held write 2 and was promoted")
    else:
        with weakened("position-from-processes") as today:
            done = failover(st, today)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "allowed: promote pg2" in done.stdout, done.stdout
        assert 2 not in ledger_ids(other.dsn), "pg2 had write 2: the race was not reproduced"
        print("\n  max(receive, replay): pg2 promoted, acknowledged write 2 lost")
