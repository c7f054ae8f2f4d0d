"""The dashboard and alert rules stay true to the metrics the sidecar exports."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import threading
import time
import urllib.request

import pytest

from pgcohort import assembly, cli, config, protocol
from pgcohort.core.rules import AnyK, Member, Rule
from tests.conftest import make_store, need
from tests.patroni import PATRONI, PatroniCluster
from tests.pg import PgCluster
from tests.servers import EtcdCluster

HERE = pathlib.Path(__file__).parent.parent / "dashboards"


def used_names(prefix: str = "pgcohort") -> set[str]:
    """Every ``<prefix>_*`` series the dashboard's panels and the alert rules query."""
    dash = json.loads((HERE / "grafana-pgcohort.json").read_text())
    text = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"]) + (HERE / "alerts.yml").read_text()
    return set(re.findall(rf"\b{prefix}_[a-z_]+", text))


def samples(exposition: bytes) -> dict[str, float]:
    """Series name (labels dropped) -> the last sample's value, for what is really exported."""
    out = {}
    for line in exposition.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


@pytest.mark.pg
@pytest.mark.etcd
def test_every_series_a_panel_or_alert_uses_is_set_by_real_sidecars(
    etcd3: EtcdCluster, cluster_name: str, pg: PgCluster
) -> None:
    """A primary's and a standby's sidecar, built as `pgcohort sidecar` builds them, run a
    few rounds against real servers; every series the dashboard or an alert uses must then
    be exported with a value (a gauge appears only once set, so a series nobody sets fails)."""
    store = make_store(etcd3, cluster_name)
    rule = Rule(AnyK(1), tuple(Member(n, "127.0.0.1", pg.nodes[n].port, "z") for n in ("pg0", "pg1", "pg2")))
    protocol.init(store, rule, "pg0", actor="t")
    flags = {"cluster": cluster_name, "etcd.endpoints": ",".join(etcd3.endpoints)}
    cars = {
        name: assembly.sidecar(config.load({**flags, "node.name": name, "postgres.dsn": pg.nodes[name].dsn}, env={}))
        for name in ("pg0", "pg1")
    }
    threads = [threading.Thread(target=car.run, daemon=True) for car in cars.values()]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 20
        while not all(car.health_problems() == [] for car in cars.values()):
            assert time.monotonic() < deadline, {n: c.health_problems() for n, c in cars.items()}
            time.sleep(0.1)
        cars["pg0"].tick()  # one more round, now that the standbys stream
        # The gate, as an HA manager's hook would run it on pg1 while pg0 still leads: a veto,
        # recorded under decisions/pg1, which pg1's sidecar exports.
        gate_args = ["gate", "--candidate", "pg1", "--cluster", cluster_name, "--etcd", ",".join(etcd3.endpoints)]
        assert cli.main(gate_args) == 3
        deadline = time.monotonic() + 15
        while samples(cars["pg1"].metrics.exposition()).get("pgcohort_gate_decision_seconds") is None:
            assert time.monotonic() < deadline, "pg1's sidecar never exported the gate's decision"
            time.sleep(0.2)
        exported = {name: samples(car.metrics.exposition()) for name, car in cars.items()}
    finally:
        for car in cars.values():
            car.stop()
        for t in threads:
            t.join(10)
        for car in cars.values():
            car.node.close()
    names = set(exported["pg0"]) | set(exported["pg1"])
    missing = {n for n in used_names() if not ({n, n + "_total", n + "_bucket"} & names)}
    assert not missing, f"the dashboard or alerts use series no sidecar sets: {sorted(missing)}"
    assert exported["pg0"]["pgcohort_primary"] == 1 and exported["pg1"]["pgcohort_primary"] == 0
    assert exported["pg0"]["pgcohort_healthy"] == 1 and exported["pg0"]["pgcohort_fenced"] == 0
    assert exported["pg0"]["pgcohort_applied_revision"] == exported["pg0"]["pgcohort_ruleset_revision"]
    assert "pgcohort_applied_revision" not in exported["pg1"]  # a standby applies nothing: absent, not 0
    assert exported["pg1"]["pgcohort_gate_decisions_total"] >= 0 and exported["pg0"]["pgcohort_term"] == 1


@pytest.mark.patroni
@pytest.mark.etcd
def test_every_patroni_series_the_dashboard_uses_is_exported_by_a_real_patroni(etcd3: EtcdCluster) -> None:
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    pc = PatroniCluster(etcd3, f"dash-{time.monotonic_ns() % 10**6}")
    try:
        for name in ("pg0", "pg1"):
            pc.add(name, sidecar=False)
            if name == "pg0":
                pc.wait_leader()
        pc.wait_streaming(["pg1"])
        names: set[str] = set()
        for a in pc.agents.values():
            with urllib.request.urlopen(a.api + "/metrics", timeout=5) as r:
                names |= set(samples(r.read()))
    finally:
        pc.close()
    missing = used_names("patroni") - names
    assert not missing, f"the dashboard or alerts use Patroni series Patroni 4.x does not export: {sorted(missing)}"


def test_alert_rules_pass_promtool() -> None:
    need("promtool", "promtool (Debian package prometheus)")
    subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=HERE, check=True, capture_output=True)
    out = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=HERE, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_fires_every_alert_rule() -> None:
    """Each alert in alerts.yml has a promtool case in which it fires (and so is not dead)."""
    import yaml

    rules = yaml.safe_load((HERE / "alerts.yml").read_text())
    cases = yaml.safe_load((HERE / "alerts_test.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    fired = {c["alertname"] for t in cases["tests"] for c in t["alert_rule_test"] if c.get("exp_alerts")}
    assert names <= fired, f"alerts never fired by alerts_test.yml: {sorted(names - fired)}"
