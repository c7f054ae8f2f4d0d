"""The cohort heals after a failover, on a real Patroni 4.x cluster of four nodes under ``any 1``.

With healing (``sidecar.heal_after``), the old primary, dead after the failover, leaves the
rule through an ordinary committed change (joint phase, barrier, finalize) made by the new
primary's sidecar, and waits on the bench; so when the new primary dies too, a third node is
promoted with nothing lost. When the old primary returns, Patroni rewinds it, it streams from
the new primary and is admitted again. Without healing (pgcohort 0.4), the dead old primary
holds the second failover hostage: nobody is promoted. A sidecar restart (SIGTERM, start
again) keeps its member and leaves the node promotable.
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
from tests.test_patroni import adopt, etcd_kv, start

pytestmark = [pytest.mark.patroni, pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]

HEAL_AFTER = 5


@pytest.fixture
def pc(etcd3: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[PatroniCluster]:
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    healing = "off" not in request.node.name
    cluster = PatroniCluster(etcd3, f"heal-{'on' if healing else 'off'}-{time.monotonic_ns() % 10**6}")
    cluster.sidecar_settings = {"heal_after": HEAL_AFTER if healing else 0, "admit_stable_for": 2}
    try:
        yield cluster
    finally:
        cluster.close()


def ruleset(etcd: EtcdCluster, pc: PatroniCluster) -> dict[str, object]:
    kv = etcd_kv(etcd, f"/pgcohort/{pc.scope}/ruleset")
    assert kv is not None
    doc: dict[str, object] = kv["json"]
    return doc


def cohort(doc: dict[str, object]) -> set[str]:
    rule = doc["rule"]
    assert isinstance(rule, dict)
    return {m["name"] for m in rule["cohort"]}


def benched(doc: dict[str, object]) -> set[str]:
    return {m["name"] for m in doc.get("benched", [])}  # type: ignore[attr-defined]


@pytest.mark.parametrize("healing", ["on", "off (pgcohort 0.4)"])
def test_two_failures_in_a_row_and_the_old_primary_returning(
    etcd3: EtcdCluster, pc: PatroniCluster, healing: str
) -> None:
    names = ("pg0", "pg1", "pg2", "pg3")
    start(pc, names)
    adopt(pc, "pg0")
    pc.wait("the adopted ruleset stable", lambda: ruleset(etcd3, pc)["phase"] == "stable", 30)
    version = ruleset(etcd3, pc)["version"]

    # A systemctl restart of a member's sidecar: SIGTERM, start again. Its member stays, still promotable.
    car = pc.agents["pg3"].sidecar
    assert car is not None
    car.signal(signal.SIGTERM)
    assert car.wait_exit(30) == 0
    assert "stays in the cohort" in car.log
    pc.start_sidecar(pc.agents["pg3"])
    time.sleep(2)
    assert ruleset(etcd3, pc)["version"] == version and "pg3" in cohort(ruleset(etcd3, pc))
    assert not os.path.exists(os.path.join(pc.agents["pg3"].conf_dir, "zz-pgcohort-tags.yml"))

    create_ledger(pc.agents["pg0"].dsn)
    acked = {i for i in range(1, 6) if acked_write(pc.agents["pg0"].dsn, i)}
    assert acked == set(range(1, 6))
    pc.kill("pg0")
    first = pc.wait_leader(90, not_="pg0")
    acked |= {i for i in range(6, 11) if acked_write(pc.agents[first].dsn, i, timeout=10)}

    if healing != "on":
        time.sleep(HEAL_AFTER * 2)
        assert "pg0" in cohort(ruleset(etcd3, pc)), "healing off, yet pg0 left the rule"
        pc.kill(first)
        deadline = time.monotonic() + pc.ttl * 2.5
        while time.monotonic() < deadline:
            assert pc.leader() is None, "promoted with pg0 in the rule: the test shows nothing"
            time.sleep(0.5)
        vetoes = [line for n in names if n not in ("pg0", first) for line in pc.agents[n].log.splitlines()
                  if line.startswith("pgcohort gate:") and "refused" in line]  # fmt: skip
        assert any("reach 1 more" in v for v in vetoes), vetoes
        print(f"\n  healing off: pg0 and {first} dead, nobody promoted ({len(vetoes)} vetoes)")
        return

    pc.wait(
        "pg0 benched by the new primary's sidecar",
        lambda: (rs := ruleset(etcd3, pc))["phase"] == "stable" and "pg0" in benched(rs) and "pg0" not in cohort(rs),
        HEAL_AFTER * 6,
    )
    pc.kill(first)
    second = pc.wait_leader(120, not_=first)
    assert second not in ("pg0", first)
    assert acked <= ledger_ids(pc.agents[second].dsn), "an acknowledged write was lost"
    history = pc.pgcohort("history", node=second).stdout
    bench_line = next(line for line in history.splitlines() if "bench pg0" in line)
    assert first in bench_line, bench_line  # who decided it: the sidecar beside the then primary

    # The old primary returns: Patroni rewinds it, it streams from the new primary, and it is admitted again.
    pc.start_agent(pc.agents["pg0"])
    pc.wait(
        "pg0 admitted again",
        lambda: (rs := ruleset(etcd3, pc))["phase"] == "stable" and "pg0" in cohort(rs) and "pg0" not in benched(rs),
        120,
    )
    history = pc.pgcohort("history", node=second).stdout
    assert "add pg0" in history, history
    assert acked <= ledger_ids(pc.agents["pg0"].dsn)
    print(f"\n  healing: pg0 benched by {first}, {second} promoted after {first} died, pg0 admitted again")
