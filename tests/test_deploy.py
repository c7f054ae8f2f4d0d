"""deploy/kubernetes: valid against the Kubernetes schemas, and wired as docs/patroni.md says."""

from __future__ import annotations

import pathlib
import shlex
from typing import Any

import pytest
import yaml

from pgcohort import config

ROOT = pathlib.Path(__file__).parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "pgcohort-patroni.yaml"


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in docs() if d["kind"] == kind]


def test_every_document_is_valid_for_kubernetes() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (a dev dependency)")
    for doc in docs():
        kv.validate(doc, "1.29", strict=True)  # raises ValidationError naming the bad field


def test_the_sidecar_container_is_wired_as_documented() -> None:
    (sts,) = by_kind("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    side = containers["pgcohort"]
    assert side["command"][:2] == ["pgcohort", "sidecar"]
    assert side["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "lifecycle" not in side  # a restart (rolling update, upgrade) must not leave the cohort
    # Patroni's configuration directory is shared, so the sidecar's tags file reaches Patroni.
    mounts = {m["mountPath"]: m["name"] for m in side["volumeMounts"]}
    patroni_mounts = {m["mountPath"]: m["name"] for m in containers["patroni"]["volumeMounts"]}
    assert mounts["/etc/patroni"] == patroni_mounts["/etc/patroni"]
    # The gate reads the mounted pgcohort file and inherits the pod's PGCOHORT_* from Patroni.
    (cm,) = by_kind("ConfigMap")
    patroni_yml = yaml.safe_load(cm["data"]["00-patroni.yml"])
    gate = shlex.split(patroni_yml["postgresql"]["pre_promote"])
    assert gate[1:3] == ["gate", "--config"] and gate[3] in patroni_mounts
    env = {e["name"] for e in containers["patroni"]["env"]}
    assert {"PGCOHORT_NODE_NAME", "PGCOHORT_NODE_HOST", "PGCOHORT_NODE_ZONE"} <= env
    assert patroni_yml["bootstrap"]["dcs"]["synchronous_mode"] == "off"
    dcs = patroni_yml["bootstrap"]["dcs"]
    assert dcs["ttl"] >= dcs["loop_wait"] + 2 * dcs["retry_timeout"]


def test_the_pgcohort_file_is_a_valid_configuration(tmp_path: pathlib.Path) -> None:
    (cm,) = by_kind("ConfigMap")
    path = tmp_path / "pgcohort.yml"
    path.write_text(cm["data"]["pgcohort.yml"])
    cfg = config.load({}, env={"PGCOHORT_NODE_NAME": "pg-0"}, file=str(path), need=("node.name",))
    assert config.adapter(cfg) == "patroni" and cfg["patroni.config_dir"] == "/etc/patroni"


def test_metrics_are_scrapable_with_the_conventional_annotations() -> None:
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for name, port in (("pg-pgcohort-metrics", "8010"), ("pg-patroni-metrics", "8008")):
        ann = services[name]["metadata"]["annotations"]
        assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
    assert services["pg"]["spec"]["publishNotReadyAddresses"] is True
