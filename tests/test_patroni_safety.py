"""The two paths that could lose or block on Patroni, each on a real Patroni 4.x cluster beside the path without the rule.

1. **A term written for a node that never became primary.** pg1's gate commits term 2 and
   pg1's Patroni dies the moment its hook exits 0; pg0, the last primary that ran, is dead for
   good. Reasoning from the term's primary (pgcohort 0.4) needs pg0 surveyed and blocks every
   later failover; reasoning from the last confirmed term's primary surveys pg1 like anyone
   and promotes a safe member, with nothing lost.
2. **Voters that keep receiving during the survey.** The old primary's Patroni hangs while its
   PostgreSQL runs, the candidates cannot reach it (a network partition), and pg3, whose agent
   hangs too, still streams from it and acknowledges its writes. Reading pg3's position without
   fencing it loses every write acknowledged between the survey and the promotion; fenced, the
   old primary's commits wait for nobody and nothing is lost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import yaml

from pgcohort.adapters.patroni import PatroniAPI
from pgcohort.store.transport import b64
from tests.conftest import IN_CI, need
from tests.netns import Network, unavailable
from tests.patroni import PATRONI, PGCOHORT, PatroniCluster
from tests.pg import PG_BIN
from tests.proxy import Proxies
from tests.race import Writer, acked_write, create_ledger, ledger_ids
from tests.servers import EtcdCluster
from tests.test_patroni import adopt, etcd_kv, sql_one, start
from tests.weakened import weakened

pytestmark = [pytest.mark.patroni, pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]


def drop_in(pc: PatroniCluster, name: str, file: str, doc: dict[str, object] | None) -> None:
    """Write (or with None remove) a drop-in file in ``name``'s Patroni configuration directory, then reload."""
    path = os.path.join(pc.agents[name].conf_dir, file)
    if doc is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        os.chmod(path, 0o644)
    agent = pc.agents[name]
    if agent.proc is not None and agent.proc.poll() is None:
        PatroniAPI(agent.api).reload()


def gate_command(pc: PatroniCluster, name: str) -> str:
    return f"{PGCOHORT} gate --config {pc.agents[name].pgcohort_config}"


def hook(pc: PatroniCluster, name: str, command: str | None) -> None:
    """Replace ``name``'s pre_promote with ``command`` (None: back to the gate as configured)."""
    drop_in(pc, name, "zz-test-hook.yml", None if command is None else {"postgresql": {"pre_promote": command}})


def vetoes(pc: PatroniCluster, names: tuple[str, ...]) -> list[str]:
    return [
        line
        for n in names
        for line in pc.agents[n].log.splitlines()
        if line.startswith("pgcohort gate:") and "refused" in line
    ]


def quiet(pc: PatroniCluster, primary: str, standbys: tuple[str, ...], still: float = 16.0) -> None:
    """Wait until the primary has written no WAL for ``still`` seconds (PostgreSQL logs a standby snapshot up to
    15 s after the last activity) and every standby replayed all of it: then no standby is ahead of another."""
    since, last = time.monotonic(), None
    while True:
        lsn = sql_one(pc.agents[primary].dsn, "SELECT pg_current_wal_flush_lsn()::text")
        if lsn != last:
            since, last = time.monotonic(), lsn
        replayed = {n: sql_one(pc.agents[n].dsn, "SELECT pg_last_wal_replay_lsn()::text") for n in standbys}
        if time.monotonic() - since >= still and all(r == lsn for r in replayed.values()):
            return
        assert time.monotonic() - since < 60, f"WAL kept moving on {primary}: {lsn}, standbys {replayed}"
        time.sleep(0.5)


@pytest.fixture
def patroni(etcd3: EtcdCluster) -> Iterator[PatroniCluster]:
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    pc = PatroniCluster(etcd3, f"never-ran-{time.monotonic_ns() % 10**6}")
    try:
        yield pc
    finally:
        pc.close()


def test_a_term_for_a_node_that_never_ran_does_not_hold_the_next_failover_hostage(
    etcd3: EtcdCluster, patroni: PatroniCluster
) -> None:
    pc = patroni
    start(pc, ("pg0", "pg1", "pg2", "pg3"))
    adopt(pc, "pg0")
    root = f"/pgcohort/{pc.scope}/"
    pc.wait(
        "pg0's sidecar confirming term 1", lambda: (c := etcd_kv(etcd3, root + "confirmed")) and c["json"]["timeline"]
    )
    create_ledger(pc.agents["pg0"].dsn)
    acked = {i for i in range(1, 6) if acked_write(pc.agents["pg0"].dsn, i)}
    assert acked == {1, 2, 3, 4, 5}

    # Only pg1 may win the first race, and its Patroni dies the moment its gate said yes.
    for n in ("pg2", "pg3"):
        drop_in(pc, n, "zz-test-tags.yml", {"tags": {"nofailover": True}})
    hook(pc, "pg1", f"/bin/sh -c '{gate_command(pc, 'pg1')} && kill -9 $PPID'")
    pc.kill("pg0")
    pc.wait("term 2 naming pg1", lambda: (t := etcd_kv(etcd3, root + "term")) and t["json"]["primary"] == "pg1", 90)
    agent = pc.agents["pg1"].proc
    assert agent is not None
    pc.wait("pg1's Patroni gone right after its hook", lambda: agent.poll() is not None, 30)
    pc.wait("pg1 still a standby", lambda: pc.agents["pg1"].postmaster_pid() is not None, 10)
    confirmed = etcd_kv(etcd3, root + "confirmed")
    assert confirmed is not None and confirmed["json"]["term"] == 1 and confirmed["json"]["primary"] == "pg0"

    # pgcohort 0.4 reasoned from term 2's primary: pg0, dead for good, would have to be surveyed.
    with weakened("reference-unconfirmed-term") as today:
        for n in ("pg2", "pg3"):
            hook(pc, n, f"env PYTHONPATH={today} {gate_command(pc, n)}")
            drop_in(pc, n, "zz-test-tags.yml", None)
        deadline = time.monotonic() + pc.ttl * 2.5
        while time.monotonic() < deadline:
            assert pc.leader() is None, "promoted under the old rule: the test shows nothing"
            time.sleep(0.5)
        refused = vetoes(pc, ("pg2", "pg3"))
        assert refused, "the old rule was never asked"
        assert any("failover from pg1 refused" in v and "reach 1 more" in v for v in refused), refused
        for n in ("pg2", "pg3"):
            hook(pc, n, None)

    # The rule: term 2 never ran, so the failover reasons from pg0 and surveys pg1 like anyone.
    new = pc.wait_leader(120, not_="pg0")
    assert new in ("pg2", "pg3")
    assert acked <= ledger_ids(pc.agents[new].dsn)
    pc.wait(
        f"{new}'s sidecar confirming its term",
        lambda: (c := etcd_kv(etcd3, root + "confirmed")) and c["json"]["primary"] == new,
    )
    history = pc.pgcohort("history", "--terms", node=new).stdout
    assert "never seen running" in history, history
    decided = [line for line in pc.agents[new].log.splitlines() if "reasoned from pg0" in line]
    assert decided, "the gate did not say which primary it reasoned from"


# --- 2. the fence, across a real partition ------------------------------------------------------------


@pytest.fixture
def network() -> Iterator[Network]:
    why = unavailable()
    if why is not None:
        if IN_CI:
            pytest.fail(f"{why}, under CI=true: the partition tests must run")
        pytest.skip(why)
    with Network(tcp_syn_retries=2) as net:
        yield net


@pytest.mark.parametrize("fence", ["fenced", "unfenced (pgcohort 0.4 on Patroni)"])
def test_a_hung_old_primary_gets_no_acknowledgement_behind_the_survey(network: Network, fence: str) -> None:
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    etcd = EtcdCluster(1, host=network.etcd_address).start()
    pc = PatroniCluster(etcd, f"fence-{time.monotonic_ns() % 10**6}", network=network,
                        dcs_parameters={"wal_sender_timeout": "5s", "wal_receiver_timeout": "5s"})  # fmt: skip
    try:
        names = ("pg0", "pg1", "pg2", "pg3")
        adopt(pc, start(pc, names))
        # Roles from the cluster as it stands once adopted: a loaded machine can move Patroni's leader key
        # between start and adoption, and the story is about whoever is primary now.
        old = pc.wait_leader()
        first, second, streamer = (n for n in names if n != old)
        dsn = pc.agents[old].dsn
        create_ledger(dsn)
        for i in range(1, 6):
            assert acked_write(dsn, i)
        quiet(pc, old, (first, second, streamer))

        # The old primary's agent hangs with PostgreSQL running; so does the streamer's, which keeps streaming
        # from it. The other two standbys cannot reach the old primary any more.
        pc.pause_agent(streamer)
        network.cut(first, old)
        network.cut(second, old)
        pc.pause_agent(old)
        with weakened("count-without-fence") if fence != "fenced" else _same() as path:
            for n in (first, second):  # an HA manager slow to promote after its hook said yes
                runner = f"env PYTHONPATH={path} " if path else ""
                hook(pc, n, f"/bin/sh -c '{runner}{gate_command(pc, n)} && sleep 2'")
            root = f"/pgcohort/{pc.scope}/"
            pc.wait("a gate's term", lambda: (t := etcd_kv(etcd, root + "term")) and t["json"]["term"] == 2, 120)
            writer = Writer(dsn)  # the old primary still runs: a client that never heard of the failover writes on
            new = pc.wait_leader(60, not_=old)
            time.sleep(1)
            acked = writer.halt() | set(range(1, 6))
        lost = acked - ledger_ids(pc.agents[new].dsn)
        if fence == "fenced":
            assert not lost, f"acknowledged by {old} and lost on {new}: {sorted(lost)}"
        else:
            assert lost, "the unfenced survey lost nothing: the partition did not reproduce the race"
            print(
                f"\n  unfenced: {len(lost)} writes acknowledged by {old} through {streamer} after the survey"
                f" are lost on {new}"
            )
    finally:
        pc.close()
        etcd.close()


class _same:
    """No scratch copy: the real code (the PYTHONPATH the agents already have)."""

    def __enter__(self) -> str:
        return ""

    def __exit__(self, *exc: object) -> None:
        return None


# --- 3. the gate with etcd in trouble -----------------------------------------------------------------------


def test_patroni_promotes_nobody_while_the_gate_cannot_reach_etcd(etcd_private: EtcdCluster) -> None:
    """Patroni reaches etcd directly; pgcohort (the gate it runs, the sidecars) through proxies. After the
    primary's death, etcd stops answering the gate, then answers 10 s late, then the gate's term write is held
    while etcd's leader is killed: every gate run refuses and Patroni promotes nobody. Once etcd answers again,
    the gate allows and the member holding every acknowledged write is promoted."""
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    proxies = Proxies(etcd_private).start()
    pc = PatroniCluster(etcd_private, f"etcd-trouble-{time.monotonic_ns() % 10**6}", pgcohort_etcd=proxies.endpoints)
    try:
        start(pc, ("pg0", "pg1", "pg2"))
        adopt(pc, "pg0")
        root = f"/pgcohort/{pc.scope}/"
        pc.wait("term 1 confirmed", lambda: (c := etcd_kv(etcd_private, root + "confirmed")) and c["json"]["timeline"])
        create_ledger(pc.agents["pg0"].dsn)
        acked = {i for i in range(1, 6) if acked_write(pc.agents["pg0"].dsn, i)}
        term_before = etcd_kv(etcd_private, root + "term")
        marker = f'"request_put": {{"key": "{b64(root + "term")}"'.encode()
        phases = [("stopped", {}), ("delay", {"delay": 10.0}), ("hold", {"marker": marker})]
        proxies.set("blackhole")
        pc.kill("pg0")

        def refusals() -> int:
            return sum(
                1
                for n in ("pg1", "pg2")
                for line in pc.agents[n].log.splitlines()
                if "pre_promote script" in line and "exited with" in line and "exited with 0" not in line
            )

        for mode, how in phases:
            before = refusals()
            proxies.reset()
            proxies.set("blackhole" if mode == "stopped" else mode, **how)  # type: ignore[arg-type]
            killed = None
            deadline = time.monotonic() + pc.ttl * 1.5
            while time.monotonic() < deadline:
                assert pc.leader() is None, f"promoted while the gate's etcd was {mode}"
                if mode == "hold" and killed is None and proxies.held():
                    killed = etcd_private.leader()
                    etcd_private.kill(killed)
                time.sleep(0.5)
            if killed is not None:
                etcd_private.restart(killed)
            assert refusals() > before, f"the gate never ran while etcd was {mode}"
        tk = etcd_kv(etcd_private, root + "term")
        assert tk is not None and term_before is not None and tk["json"] == term_before["json"]
        proxies.reset()
        new = pc.wait_leader(120, not_="pg0")
        assert acked <= ledger_ids(pc.agents[new].dsn)
    finally:
        pc.close()
        proxies.close()
