"""pgcohort dropped into a real Patroni 4.x cluster (from PyPI) on a real 3-member etcd.

Each test starts its own Patroni cluster (about 7 s for three nodes): the agents run as
``postgres`` with the gate wired as ``pre_promote``, one pgcohort sidecar per node.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import yaml

from tests.conftest import need
from tests.patroni import PATRONI, PGCOHORT, PatroniCluster
from tests.pg import PG_BIN
from tests.race import Writer, acked_write, create_ledger, ledger_ids
from tests.servers import Certs, EtcdCluster

pytestmark = [pytest.mark.patroni, pytest.mark.pg, pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def patroni(etcd3: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[PatroniCluster]:
    need(PATRONI, "Patroni (pip install 'patroni[etcd3,psycopg3]' into the venv: bash scripts/setup)")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    scope = "p" + request.node.name.removeprefix("test_")[:20].replace("_", "-") + f"-{time.monotonic_ns() % 10**6}"
    pc = PatroniCluster(etcd3, scope)
    try:
        yield pc
    finally:
        pc.close()


# --- helpers ------------------------------------------------------------------------


def etcd_kv(etcd: EtcdCluster, key: str) -> dict[str, Any] | None:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    req = urllib.request.Request(etcd.endpoints[0] + "/v3/kv/range", data=body)
    with urllib.request.urlopen(req, timeout=3) as r:
        kvs = json.loads(r.read()).get("kvs") or []
    if not kvs:
        return None
    kv: dict[str, Any] = kvs[0]
    kv["json"] = json.loads(base64.b64decode(kv.get("value", "")) or b"null")
    return kv


def sql_one(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute(query).fetchone()
        return None if row is None else row[0]


def setting(pc: PatroniCluster, name: str) -> str:
    return str(sql_one(pc.agents[name].dsn, "SHOW synchronous_standby_names"))


def auto_conf_setting(pc: PatroniCluster, name: str) -> int:
    return int(
        sql_one(
            pc.agents[name].dsn,
            "SELECT count(*) FROM pg_file_settings WHERE name = 'synchronous_standby_names'"
            " AND sourcefile LIKE '%postgresql.auto.conf'",
        )
    )


def start(pc: PatroniCluster, names: tuple[str, ...], *, sidecars: bool = True) -> str:
    for i, n in enumerate(names):
        pc.add(n, "zone-a" if i < 2 else "zone-b", sidecar=False)
        if i == 0:
            pc.wait_leader()
    leader = pc.wait_leader()
    pc.wait_streaming([n for n in names if n != leader])
    if sidecars:
        for n in names:
            pc.start_sidecar(pc.agents[n])
    return leader


def adopt(pc: PatroniCluster, leader: str, policy: str = "any 1") -> str:
    """``init --from-patroni``; a Patroni that reports no leader for a moment (a loaded machine renews the
    leader key late) is asked again, as an operator would, for up to a minute."""
    deadline = time.monotonic() + 60
    while True:
        done = pc.pgcohort("init", "--from-patroni", pc.agents[leader].api, "--policy", policy, check=False)
        if done.returncode == 0:
            return done.stdout
        if "reports no leader" not in done.stderr or time.monotonic() > deadline:
            raise AssertionError(f"init --from-patroni exited {done.returncode}: {done.stdout}{done.stderr}")
        time.sleep(1)


# --- adoption, refusal beside Patroni's own sync mode ---------------------------------------


def test_adoption_from_quorum_mode_is_one_transaction_and_the_setting_lives_in_patronis_config(
    etcd3: EtcdCluster, patroni: PatroniCluster
) -> None:
    patroni.synchronous_mode = "quorum"
    leader = start(patroni, ("pg0", "pg1", "pg2"), sidecars=False)
    patroni.wait("Patroni's quorum setting", lambda: setting(patroni, leader).startswith("ANY 1"))

    # Two owners of one setting lose writes: the sidecar refuses to start and says how to switch.
    refused = patroni.pgcohort("sidecar", node=leader, check=False)
    assert refused.returncode != 0
    assert "synchronous_mode is 'quorum'" in refused.stderr and "init --from-patroni" in refused.stderr, refused.stderr

    out = adopt(patroni, leader)
    assert "synchronous_mode 'quorum' -> false" in out, out
    cfg = etcd_kv(etcd3, f"/service/{patroni.scope}/config")
    ruleset = etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/ruleset")
    term = etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/term")
    assert cfg and ruleset and term
    assert cfg["mod_revision"] == ruleset["mod_revision"] == term["mod_revision"], "not one transaction"
    assert cfg["json"]["synchronous_mode"] is False
    others = sorted(n for n in ("pg0", "pg1", "pg2") if n != leader)
    want = f"ANY 1 ({', '.join(others)})"
    assert cfg["json"]["postgresql"]["parameters"]["synchronous_standby_names"] == want
    assert cfg["json"]["pgcohort"] == {"root": f"/pgcohort/{patroni.scope}/"}

    patroni.wait("the adopted setting on the primary", lambda: setting(patroni, leader) == want, 30)
    assert want in patroni.patronictl("show-config").stdout
    for n in ("pg0", "pg1", "pg2"):
        assert auto_conf_setting(patroni, n) == 0, f"{n}'s postgresql.auto.conf holds synchronous_standby_names"
        patroni.start_sidecar(patroni.agents[n])
    for n in ("pg0", "pg1", "pg2"):
        car = patroni.agents[n].sidecar
        assert car is not None
        patroni.wait(f"{n} healthy", lambda car=car: car.get("/health")[0] == 200, 30)


# --- add a fourth member ---------------------------------------------------------------------


def test_adding_a_fourth_member_goes_through_patronis_config_after_the_commit(
    etcd3: EtcdCluster, patroni: PatroniCluster
) -> None:
    leader = start(patroni, ("pg0", "pg1", "pg2"))
    adopt(patroni, leader)
    d = patroni.add("pg3", "zone-b")
    patroni.wait_streaming(["pg3"])

    # Not a member yet: it must not win Patroni's leader race.
    patroni.wait("pg3 tagged nofailover", lambda: d.get("/patroni")[1].get("tags", {}).get("nofailover") is True, 30)
    vetoed = patroni.gate_as_patroni("pg3")
    assert vetoed.returncode != 0 and "pg3" in vetoed.stderr, vetoed.stdout + vetoed.stderr

    before = etcd_kv(etcd3, f"/service/{patroni.scope}/config")
    assert before is not None
    added = patroni.pgcohort("add", f"pg3@127.0.0.1:{d.pg_port}/zone-b")
    committed = int(added.stdout.split("at revision ")[1].split(":")[0])
    others = sorted(n for n in ("pg0", "pg1", "pg2", "pg3") if n != leader)
    want = f"ANY 1 ({', '.join(others)})"
    patroni.wait("the new setting on the primary", lambda: setting(patroni, leader) == want, 30)
    after = etcd_kv(etcd3, f"/service/{patroni.scope}/config")
    assert after is not None and after["json"]["postgresql"]["parameters"]["synchronous_standby_names"] == want
    assert int(after["mod_revision"]) > committed > int(before["mod_revision"]), "the setting moved before the commit"

    final = patroni.wait(
        "finalized",
        lambda: (rs := etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/ruleset")) and rs["json"]["phase"] == "stable" and rs,
        30,
    )
    for n, a in patroni.agents.items():
        car = a.sidecar
        assert car is not None
        patroni.wait(
            f"{n}'s /ruleset at revision {final['mod_revision']}",
            lambda car=car: car.get("/ruleset")[1]["revision"] == int(final["mod_revision"]),
            20,
        )
        assert auto_conf_setting(patroni, n) == 0
    patroni.wait("pg3's nofailover tag removed", lambda: not d.get("/patroni")[1].get("tags", {}).get("nofailover"), 30)


# --- failover: kill -9 of the primary --------------------------------------------------------


def test_kill_of_the_primary_fails_over_through_the_gate_and_keeps_every_acknowledged_write(
    etcd3: EtcdCluster, patroni: PatroniCluster
) -> None:
    leader = start(patroni, ("pg0", "pg1", "pg2"))
    adopt(patroni, leader)
    others = sorted(n for n in ("pg0", "pg1", "pg2") if n != leader)
    patroni.wait("the setting", lambda: setting(patroni, leader) == f"ANY 1 ({', '.join(others)})", 30)
    create_ledger(patroni.agents[leader].dsn)
    writer = Writer(patroni.agents[leader].dsn)
    time.sleep(2.0)
    patroni.kill(leader)
    acked = writer.halt()
    assert acked, "no write was acknowledged"

    new = patroni.wait_leader(90, not_=leader)
    term = etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/term")
    assert term is not None and term["json"]["primary"] == new and term["json"]["term"] == 2, term
    assert "may now be promoted" in patroni.agents[new].log, "Patroni did not run the gate"
    missing = acked - ledger_ids(patroni.agents[new].dsn)
    assert not missing, f"{len(missing)} acknowledged writes lost"
    survivor = next(n for n in others if n != new)
    patroni.wait_streaming([survivor], 60)  # Patroni repointed it: nothing left behind by the gate
    patroni.wait(  # its WAL receiver may restart once more while Patroni settles: wait, do not sample
        f"{survivor}'s WAL receiver",
        lambda: sql_one(patroni.agents[survivor].dsn, "SELECT count(*) FROM pg_stat_wal_receiver") == 1,
        30,
    )
    assert auto_conf_setting(patroni, survivor) == 0
    # The sidecar beside the new primary renders the rule for it, through Patroni's config.
    want = f"ANY 1 ({', '.join(sorted({leader, survivor}))})"
    patroni.wait("the new primary's rule", lambda: setting(patroni, new) == want, 30)
    assert acked_write(patroni.agents[new].dsn, 10**6, timeout=10), "the new primary's commits are not acknowledged"


# --- switchover, manual failover, restart of the primary's Patroni -----------------------------


def test_switchover_failover_and_a_restart_still_work_with_the_gate(
    etcd3: EtcdCluster, patroni: PatroniCluster
) -> None:
    leader = start(patroni, ("pg0", "pg1", "pg2"))
    adopt(patroni, leader)
    others = sorted(n for n in ("pg0", "pg1", "pg2") if n != leader)

    patroni.patronictl("switchover", "--leader", leader, "--candidate", others[0], "--force")
    assert patroni.wait_leader(60, not_=leader) == others[0]
    patroni.wait_streaming([leader, others[1]], 60)
    term = etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/term")
    assert term is not None and term["json"]["primary"] == others[0]

    patroni.patronictl("failover", "--candidate", others[1], "--force")
    assert patroni.wait_leader(60, not_=others[0]) == others[1]
    patroni.wait_streaming([leader, others[0]], 60)
    term = etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/term")
    assert term is not None and term["json"]["primary"] == others[1] and term["json"]["term"] == 3

    # The primary's Patroni restarts (PostgreSQL keeps running): it keeps or retakes its own key.
    a = patroni.agents[others[1]]
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait()
    patroni.start_agent(a)
    patroni.wait("the same leader after its agent restarted", lambda: patroni.leader() == others[1], 60)
    term = etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/term")
    assert term is not None and term["json"]["term"] == 3, "a restart must not need a new term"


# --- the gate for a cluster pgcohort does not manage -------------------------------------------


def test_the_gate_never_silently_unprotects_an_unmanaged_or_misnamed_cluster(
    etcd3: EtcdCluster, patroni: PatroniCluster
) -> None:
    leader = start(patroni, ("pg0", "pg1"), sidecars=False)
    other = next(n for n in ("pg0", "pg1") if n != leader)

    # Wired before `init`: vetoed, and the veto says why and what to do.
    vetoed = patroni.gate_as_patroni(other)
    assert vetoed.returncode != 0
    assert (
        "no ruleset" in vetoed.stderr and "init --from-patroni" in vetoed.stderr and "gate.unmanaged" in vetoed.stderr
    )

    # An explicit opt-in lets Patroni promote alone until init, loudly.
    a = patroni.agents[other]
    with open(a.pgcohort_config) as f:
        doc = yaml.safe_load(f)
    rewrite(a.pgcohort_config, {**doc, "gate": {"unmanaged": "allow"}})
    allowed = patroni.gate_as_patroni(other)
    assert allowed.returncode == 0 and "WITHOUT pgcohort's check" in allowed.stderr, allowed.stderr

    # Once adopted, a typo in the cluster name cannot switch protection off, even with the opt-in.
    adopt(patroni, leader)
    typo = {**doc, "cluster": patroni.scope + "-typo", "gate": {"unmanaged": "allow"}}
    typo["patroni"] = {**doc["patroni"], "scope": patroni.scope}
    rewrite(a.pgcohort_config, typo)
    refused = patroni.gate_as_patroni(other)
    assert refused.returncode != 0, refused.stdout
    assert f"manages this cluster at /pgcohort/{patroni.scope}/" in refused.stderr, refused.stderr


def rewrite(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)


# --- what pgcohort adds to Patroni's own quorum mode ---------------------------------------------


def test_what_pgcohort_adds_to_patroni_explicit_cohort_cross_zone_and_a_shared_record(
    etcd3: EtcdCluster, patroni: PatroniCluster
) -> None:
    """Patroni's quorum mode admits any streaming standby by itself and has no zone policy.
    With pgcohort: a standby joins only by a committed, audited decision; `cross-zone`
    makes every commit wait for the other zone; and the cohort is one record any tool reads."""
    leader = start(patroni, ("pg0", "pg1", "pg2"))  # pg0, pg1 in zone-a; pg2 in zone-b
    assert leader == "pg0"
    adopt(patroni, leader)
    patroni.wait("the adopted setting", lambda: setting(patroni, "pg0") == "ANY 1 (pg1, pg2)", 30)

    # 1. A streaming standby is not a member until a committed decision says so.
    d = patroni.add("pg3", "zone-b")
    patroni.wait_streaming(["pg3"])
    patroni.wait("pg3 tagged nofailover", lambda: d.get("/patroni")[1].get("tags", {}).get("nofailover") is True, 30)
    time.sleep(3)
    assert setting(patroni, "pg0") == "ANY 1 (pg1, pg2)", "a standby joined the durability rule by itself"
    patroni.pgcohort("add", f"pg3@127.0.0.1:{d.pg_port}/zone-b")
    patroni.wait("pg3 in the rule", lambda: setting(patroni, "pg0") == "ANY 1 (pg1, pg2, pg3)", 30)
    history = patroni.pgcohort("history").stdout
    assert "add pg3" in history and "test" in history, history  # who decided, and when

    # 2. cross-zone: every commit waits for an acknowledgement from the other zone.
    patroni.wait("stable", lambda: "stable" in patroni.pgcohort("status").stdout, 30)
    patroni.pgcohort("policy", "cross-zone")
    patroni.wait("the cross-zone setting", lambda: setting(patroni, "pg0") == "ANY 1 (pg2, pg3)", 30)
    cfg = etcd_kv(etcd3, f"/service/{patroni.scope}/config")
    assert (
        cfg is not None and cfg["json"]["postgresql"]["parameters"]["synchronous_standby_names"] == "ANY 1 (pg2, pg3)"
    )
    p = patroni.agents["pg0"].dsn
    create_ledger(p)
    other_zone = [patroni.wal_receiver(n) for n in ("pg2", "pg3")]
    assert all(other_zone)
    for pid in other_zone:
        os.kill(pid or 0, signal.SIGSTOP)
    try:
        assert not acked_write(p, 1, timeout=2.0), "a commit was acknowledged by zone-a alone"
    finally:
        for pid in other_zone:
            os.kill(pid or 0, signal.SIGCONT)
    assert patroni.wait("write 2 acknowledged by zone-b", lambda: acked_write(p, 2, timeout=5.0), 20)

    # 3. One membership record, shared with tools outside Patroni.
    status = json.loads(patroni.pgcohort("status", "--json").stdout)
    ruleset = etcd_kv(etcd3, f"/pgcohort/{patroni.scope}/ruleset")
    assert ruleset is not None
    names = sorted(m["name"] for m in ruleset["json"]["rule"]["cohort"])
    assert names == ["pg0", "pg1", "pg2", "pg3"]
    assert status["revision"] == int(ruleset["mod_revision"])


def test_patronis_rest_api_over_https_with_a_private_ca_and_client_certificates(
    etcd3: EtcdCluster, tmp_path: pathlib.Path
) -> None:
    """Patroni serves its REST API over HTTPS and requires client certificates (restapi.verify_client): adoption
    and the sidecar's tags reload go through with patroni.cacert/cert/key, and without the CA the command says
    which setting to set."""
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    certs = Certs.make(str(tmp_path / "certs"))
    pc = PatroniCluster(etcd3, f"https-{time.monotonic_ns() % 10**6}", rest_tls=certs)
    try:
        start(pc, ("pg0", "pg1"))
        assert pc.agents["pg0"].api.startswith("https://")
        adopt(pc, "pg0")
        outsider = pc.add("pg2", "zone-b")  # not a member: its sidecar tags it nofailover and reloads Patroni
        pc.wait(
            "pg2's Patroni reporting nofailover",
            lambda: (got := outsider.get("/patroni"))[0] == 200 and got[1].get("tags", {}).get("nofailover") is True,
            60,
        )
        bare = os.path.join(pc.root, "no-ca.yml")
        doc = pc.pgcohort_config(pc.agents["pg0"])
        for k in ("cacert", "cert", "key"):
            doc["patroni"].pop(k)
        with open(bare, "w") as f:
            yaml.safe_dump(doc, f)
        refused = subprocess.run(
            [PGCOHORT, "init", "--from-patroni", pc.agents["pg0"].api, "--config", bare],
            capture_output=True, text=True, env=pc.sidecar_env(pc.agents["pg0"]),
        )  # fmt: skip
        assert refused.returncode == 9, refused.stdout + refused.stderr
        assert "set patroni.cacert" in refused.stderr, refused.stderr
    finally:
        pc.close()
