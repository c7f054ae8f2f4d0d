"""The dashboard and alert rules stay true to the metrics the sidecar exports."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import threading
import time

import pytest

from pgcohort import assembly, config, protocol
from pgcohort.core.rules import AnyK, Member, Rule
from tests.conftest import make_store, need
from tests.pg import PgCluster
from tests.servers import EtcdCluster

HERE = pathlib.Path(__file__).parent.parent / "dashboards"


def used_names() -> set[str]:
    """Every pgcohort_* series the dashboard's panels and the alert rules query."""
    dash = json.loads((HERE / "grafana-pgcohort.json").read_text())
    text = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"]) + (HERE / "alerts.yml").read_text()
    return set(re.findall(r"\bpgcohort_[a-z_]+", text))


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


def test_alert_rules_pass_promtool() -> None:
    need("promtool", "promtool (Debian package prometheus)")
    subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=HERE, check=True, capture_output=True)
    out = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=HERE, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
