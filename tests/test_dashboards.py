"""The dashboard and alert rules stay true to the metrics the sidecar exports."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import pytest

from plugin.metrics import Metrics
from plugin.store import StoreStats
from tests.conftest import need

HERE = pathlib.Path(__file__).parent.parent / "dashboards"


def exported_names() -> set[str]:
    m = Metrics("pg0")
    m.watch_store(lambda: StoreStats(0, 0, 0, 0, 0))
    m.etcd_seconds.labels("kv/range").observe(0.001)
    m.lag.labels("pg1").set(0)
    text = m.exposition().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\bpgcohort_[a-z_]+", text))


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((HERE / "grafana-pgcohort.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    missing = used_names(exprs) - exported_names()
    assert not missing, f"dashboard uses metrics the sidecar does not export: {missing}"


def test_alerts_use_only_exported_metrics() -> None:
    missing = used_names((HERE / "alerts.yml").read_text()) - exported_names()
    assert not missing, f"alert rules use metrics the sidecar does not export: {missing}"


def test_alert_rules_pass_promtool() -> None:
    need("promtool", "promtool (Debian package prometheus)")
    subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=HERE, check=True, capture_output=True)
    out = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=HERE, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "name",
    ["pgcohort_ruleset_revision", "pgcohort_healthy", "pgcohort_etcd_errors_total", "pgcohort_watch_resyncs_total"],
)
def test_core_metrics_exist(name: str) -> None:
    assert name in exported_names()
