"""The seed's race on a real Patroni 4.x cluster: Patroni alone loses the write, the gate keeps it.

p (pg0) is the primary; b, c (pg1, pg2) and d (pg3, the newest member) are its standbys
under ``ANY 1 (pg1, pg2, pg3)``. Write 1 is acknowledged by all. b's and c's WAL receivers
are paused, so write 2 is acknowledged by d alone. d's Patroni agent hangs (SIGSTOP; its
PostgreSQL keeps running), p's Patroni and PostgreSQL are killed, and b's and c's WAL
receivers are killed so the WAL in flight to them is gone.

* Patroni alone (``synchronous_mode: off``, the setting passed through its dynamic
  configuration): b or c is promoted about ``ttl`` seconds later, without write 2 (a
  member whose status request times out is left out of Patroni's comparison).
* With pgcohort (the gate as ``pre_promote``, d added with ``pgcohort add``): b and c are
  vetoed, because d is reachable and further ahead; nobody is promoted while d's agent
  hangs; once it resumes, d is promoted and write 2 survives.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.conftest import need
from tests.patroni import PATRONI, PatroniCluster
from tests.pg import PG_BIN
from tests.race import acked_write, create_ledger, ledger_ids
from tests.servers import EtcdCluster
from tests.test_patroni import adopt, etcd_kv, setting, start

pytestmark = [pytest.mark.patroni, pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]

SSN = "ANY 1 (pg1, pg2, pg3)"


@pytest.fixture
def cluster(etcd3: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[PatroniCluster]:
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    gated = "gated" in request.node.name
    pc = PatroniCluster(etcd3, f"race-{'gated' if gated else 'alone'}-{time.monotonic_ns() % 10**6}", gate=gated)
    if not gated:
        pc.dcs_parameters = {"synchronous_standby_names": SSN}
    try:
        yield pc
    finally:
        pc.close()


def race(pc: PatroniCluster) -> None:
    """Writes 1 (everyone) and 2 (d alone); then d's agent hangs and p dies; in-flight WAL to b, c is lost."""
    pc.wait("every replica streaming", lambda: pc.streaming(["pg1", "pg2", "pg3"]), 60)
    p = pc.agents["pg0"].dsn
    create_ledger(p)
    assert acked_write(p, 1)
    receivers = {n: pc.wal_receiver(n) for n in ("pg1", "pg2")}
    assert all(receivers.values()), receivers
    for pid in receivers.values():
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
    assert acked_write(p, 2, timeout=10), "write 2 was not acknowledged (by d)"
    pc.pause_agent("pg3")
    pc.kill("pg0")
    for pid in receivers.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the standby crash-restarts (~0.1 s) without write 2's WAL


def test_patroni_alone_promotes_a_member_without_the_acknowledged_write(cluster: PatroniCluster) -> None:
    start(cluster, ("pg0", "pg1", "pg2", "pg3"), sidecars=False)
    cluster.wait("Patroni passing the setting through", lambda: setting(cluster, "pg0") == SSN, 30)
    race(cluster)
    new = cluster.wait_leader(90, not_="pg0")
    assert new in ("pg1", "pg2")
    assert 1 in ledger_ids(cluster.agents[new].dsn)
    assert 2 not in ledger_ids(cluster.agents[new].dsn), "Patroni alone kept write 2: the race was not reproduced"
    print(f"\n  Patroni alone promoted {new}: the acknowledged write 2 is lost")


def test_gated_patroni_never_promotes_a_member_without_it_and_promotes_d_when_it_returns(
    etcd3: EtcdCluster, cluster: PatroniCluster
) -> None:
    start(cluster, ("pg0", "pg1", "pg2"))
    adopt(cluster, "pg0")
    d = cluster.add("pg3", "zone-b")
    cluster.wait_streaming(["pg3"])
    cluster.pgcohort("add", f"pg3@127.0.0.1:{d.pg_port}/zone-b")
    cluster.wait("the new rule in force", lambda: setting(cluster, "pg0") == SSN, 30)
    cluster.wait(
        "finalized",
        lambda: (rs := etcd_kv(etcd3, f"/pgcohort/{cluster.scope}/ruleset")) and rs["json"]["phase"] == "stable",
        30,
    )
    race(cluster)

    # Past Patroni's ttl and a veto round: nobody without write 2 may become primary.
    deadline = time.monotonic() + cluster.ttl * 2
    while time.monotonic() < deadline:
        assert cluster.leader() not in ("pg1", "pg2"), "a member without the acknowledged write was promoted"
        time.sleep(0.5)
    vetoes = [
        line
        for n in ("pg1", "pg2")
        for line in cluster.agents[n].log.splitlines()
        if line.startswith("pgcohort gate:") and "refused" in line
    ]
    assert vetoes, "the gate was never asked (or never refused)"
    assert any("pg3" in v for v in vetoes), vetoes

    cluster.resume_agent("pg3")
    assert cluster.wait_leader(90, not_="pg0") == "pg3"
    assert {1, 2} <= ledger_ids(cluster.agents["pg3"].dsn), "write 2 was lost"
    term = etcd_kv(etcd3, f"/pgcohort/{cluster.scope}/term")
    assert term is not None and term["json"]["primary"] == "pg3"
    cluster.wait_streaming(["pg1", "pg2"], 90)
    for n in ("pg1", "pg2"):
        assert 2 in ledger_ids(cluster.agents[n].dsn) or cluster.wait(
            f"{n} replaying write 2", lambda n=n: 2 in ledger_ids(cluster.agents[n].dsn), 30
        )
    print(f"\n  gated: {len(vetoes)} vetoes while d hung, e.g. {vetoes[0][:160]}; then pg3 promoted, write 2 kept")
