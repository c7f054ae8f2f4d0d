"""A real partition between two Patroni nodes on one machine (tests/netns.py): that pair's stream stops,
the rest of the cluster and etcd carry on, and healing restores it.

Three nodes (pg0 leader, pg1, pg2), each in a network namespace of its own with its agent,
PostgreSQL and spawned children; etcd and this test in the root namespace, reached over a
bridge. No gate and no sidecars: this checks the network, not pgcohort.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import IN_CI, need
from tests.netns import Network, unavailable
from tests.patroni import PATRONI, PatroniCluster
from tests.pg import PG_BIN
from tests.servers import ETCD, EtcdCluster

pytestmark = [pytest.mark.patroni, pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]

# A hung stream is noticed in seconds rather than a minute, by both ends.
FAST_TIMEOUTS = {"wal_sender_timeout": "5s", "wal_receiver_timeout": "5s"}
STREAMING_TO = "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"


@pytest.fixture
def network() -> Iterator[Network]:
    why = unavailable()
    if why is not None:
        if IN_CI:
            pytest.fail(f"{why}, under CI=true: the partition tests must run")
        pytest.skip(why)
    with Network(tcp_syn_retries=2) as net:
        yield net


@pytest.fixture
def cluster(network: Network) -> Iterator[PatroniCluster]:
    need(PATRONI, "Patroni (pip install 'patroni[etcd3,psycopg3]' into the venv: bash scripts/setup)")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    need(ETCD, "etcd-server")
    etcd = EtcdCluster(1, host=network.etcd_address).start()
    pc = PatroniCluster(
        etcd, f"netns-{time.monotonic_ns() % 10**6}", gate=False, dcs_parameters=FAST_TIMEOUTS, network=network
    )
    try:
        yield pc
    finally:
        pc.close()
        etcd.close()


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def state(pid: int) -> str:
    """The process's state letter (/proc/PID/stat): T when stopped."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def eventually(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def test_a_cut_between_two_nodes_stops_only_their_stream_and_healing_restores_it(
    network: Network, cluster: PatroniCluster
) -> None:
    for name in ("pg0", "pg1", "pg2"):
        cluster.add(name, sidecar=False)
        if name == "pg0":
            assert cluster.wait_leader() == "pg0"
    cluster.wait_streaming(["pg1", "pg2"])
    pg0, pg1, pg2 = (cluster.agents[n] for n in ("pg0", "pg1", "pg2"))
    assert pg0.host and pg1.host and pg2.host

    # Each node's processes run in its namespace, and the PID the test holds is Patroni itself, as
    # postgres: pause_agent/kill signal the real process, not a wrapper.
    postgres_uid = pwd.getpwnam("postgres").pw_uid
    for a in (pg0, pg1, pg2):
        assert a.host and a.proc
        with open(f"/proc/{a.proc.pid}/cmdline", "rb") as f:
            assert PATRONI.encode() in f.read().split(b"\0")
        assert os.stat(f"/proc/{a.proc.pid}").st_uid == postgres_uid
        assert a.host.contains(a.proc.pid) and a.host.contains(a.postmaster_pid() or 0)
    receiver = cluster.wal_receiver("pg2")
    assert receiver and pg2.host.contains(receiver) and not pg1.host.contains(receiver)
    patroni1 = pg1.proc.pid if pg1.proc else 0
    cluster.pause_agent("pg1")
    eventually("pg1's Patroni stopped", lambda: state(patroni1) == "T", 5)
    cluster.resume_agent("pg1")
    eventually("pg1's Patroni running", lambda: state(patroni1) != "T", 5)

    def senders() -> set[str]:
        return {r[0] for r in query(pg0.dsn, STREAMING_TO)}

    def newest(dsn: str) -> int:
        try:
            return int(query(dsn, "SELECT coalesce(max(id), 0) FROM t")[0][0])
        except psycopg.errors.UndefinedTable:  # not replayed yet
            return 0

    query(pg0.dsn, "CREATE TABLE t (id int)")
    query(pg0.dsn, "INSERT INTO t VALUES (1)")
    cluster.wait("row 1 on both replicas", lambda: newest(pg1.dsn) == newest(pg2.dsn) == 1, 20)
    assert senders() == {"pg1", "pg2"}

    network.cut("pg2", "pg0")
    assert not pg2.host.can_connect(pg0.address, pg0.pg_port), "pg2 still reaches pg0"
    assert pg1.host.can_connect(pg0.address, pg0.pg_port) and pg2.host.can_connect(pg1.address, pg1.pg_port)

    # Both ends of the hung stream give up (wal_sender/receiver_timeout); pg1's stream never stops.
    cluster.wait("pg0 to lose pg2's stream", lambda: senders() == {"pg1"}, 30)
    cluster.wait(
        "pg2's WAL receiver to stop streaming",
        lambda: not query(pg2.dsn, "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'"),
        30,
    )
    query(pg0.dsn, "INSERT INTO t VALUES (2)")
    cluster.wait("row 2 on pg1", lambda: newest(pg1.dsn) == 2, 10)
    time.sleep(2)
    assert newest(pg2.dsn) == 1, "a write crossed the cut"
    assert senders() == {"pg1"}

    # pg2 still reaches etcd: directly, and through its Patroni, which publishes its lost stream there.
    health = pg2.host.run(
        ["etcdctl", "--endpoints", ",".join(cluster.etcd.endpoints), "--command-timeout=3s", "endpoint", "health"],
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )
    assert health.returncode == 0, health.stderr
    cluster.wait(
        "pg2's Patroni to report it is not streaming, through etcd",
        lambda: {m["name"]: m.get("state") for m in cluster.members()}.get("pg2") == "running",
        20,
    )

    network.heal()
    cluster.wait("pg0 to stream to pg2 again", lambda: senders() == {"pg1", "pg2"}, 30)
    cluster.wait("row 2 on pg2", lambda: newest(pg2.dsn) == 2, 10)
    cluster.wait_streaming(["pg1", "pg2"], 20)

    # kill -9 reaches every process: nothing is left in any namespace.
    cluster.close()
    hosts = (pg0.host, pg1.host, pg2.host)
    eventually("every namespace empty", lambda: not any(h.pids() for h in hosts), 10)
