"""docker-compose.yml: valid for docker-compose, and the same topology and settings as the native demo.

The native demo (scripts/demo.py, built by tests/patroni.py) and the compose file must not
drift: the same nodes and zones, the same Patroni settings (ttl, loop_wait, retry_timeout,
synchronous_mode off, rewind, slots, the gate as pre_promote reading one pgcohort file), the
same pgcohort settings (adapter, Patroni URL and configuration directory), the same adoption
policy, and Prometheus scraping every sidecar and every Patroni.
"""

from __future__ import annotations

import pathlib
import shlex
import subprocess
from typing import Any

import yaml

from pgcohort import config
from tests.conftest import need
from tests.patroni import DEMO_NODES as NODES
from tests.patroni import DEMO_POLICY as POLICY
from tests.patroni import DEMO_SCOPE as SCOPE
from tests.patroni import Agent, patroni_config, pgcohort_config

ROOT = pathlib.Path(__file__).parent.parent


def load(path: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / path).read_text())
    return doc


def compose() -> dict[str, Any]:
    return load("docker-compose.yml")


def native(name: str, zone: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Patroni and pgcohort configurations the native demo gives node ``name``."""
    agent = Agent(name, zone, 5432, 8008, 8010, f"/nodes/{name}")
    endpoints = ["http://127.0.0.1:2379"]
    return patroni_config(SCOPE, agent, endpoints), pgcohort_config(SCOPE, agent, endpoints)


def test_docker_compose_accepts_it() -> None:
    need("docker-compose", "docker-compose (Debian package)")
    out = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_the_same_nodes_and_services_as_the_native_demo() -> None:
    services = set(compose()["services"])
    names = [n for n, _ in NODES]
    assert {"etcd0", "etcd1", "etcd2", "init", "prometheus", "grafana"} | set(names) | {
        f"sidecar-{n}" for n in names
    } == services
    for n in names:
        sidecar = compose()["services"][f"sidecar-{n}"]
        assert sidecar["network_mode"] == f"service:{n}", "the sidecar must reach its Patroni on 127.0.0.1"


def test_the_same_patroni_settings_as_the_native_demo() -> None:
    for name, zone in NODES:
        mine = load(f"docker/patroni/{name}.yml")
        theirs, _ = native(name, zone)
        assert mine["scope"] == theirs["scope"] == SCOPE and mine["name"] == name
        assert mine["namespace"] == theirs["namespace"]
        assert mine["tags"] == theirs["tags"] == {"zone": zone}
        dcs_mine, dcs_theirs = mine["bootstrap"]["dcs"], theirs["bootstrap"]["dcs"]
        for key in ("ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover", "synchronous_mode"):
            assert dcs_mine[key] == dcs_theirs[key], key
        assert dcs_mine["ttl"] >= dcs_mine["loop_wait"] + 2 * dcs_mine["retry_timeout"]
        for key in ("use_pg_rewind", "use_slots"):
            assert dcs_mine["postgresql"][key] == dcs_theirs["postgresql"][key], key
        assert dcs_mine["postgresql"]["parameters"]["wal_log_hints"] == "on"
        gate, native_gate = (
            shlex.split(mine["postgresql"]["pre_promote"]),
            shlex.split(theirs["postgresql"]["pre_promote"]),
        )
        assert gate[1:3] == native_gate[1:3] == ["gate", "--config"] and gate[0].endswith("/bin/pgcohort")
        mounts = compose()["services"][name]["volumes"]
        assert f"./docker/pgcohort/{name}.yml:{gate[3]}:ro" in mounts, "the gate reads a file that is not mounted"
        assert f"./docker/patroni/{name}.yml:/etc/patroni/00-patroni.yml:ro" in mounts


def test_the_same_pgcohort_settings_as_the_native_demo() -> None:
    for name, zone in NODES:
        path = ROOT / f"docker/pgcohort/{name}.yml"
        cfg = config.load({}, env={}, file=str(path), need=("node.name",))  # raises on any unknown or invalid key
        _, theirs = native(name, zone)
        assert cfg["cluster"] == theirs["cluster"] == SCOPE
        assert (cfg["node.name"], cfg["node.zone"]) == (theirs["node"]["name"], theirs["node"]["zone"]) == (name, zone)
        assert cfg["sidecar.adapter"] == theirs["sidecar"]["adapter"] == "patroni"
        assert cfg["patroni.url"] == "http://127.0.0.1:8008"
        sidecar = compose()["services"][f"sidecar-{name}"]
        assert f"{name}-patroni:{cfg['patroni.config_dir']}" in sidecar["volumes"], "tags file not in Patroni's dir"
        assert f"{name}-patroni:{cfg['patroni.config_dir']}" in compose()["services"][name]["volumes"]
        assert cfg["sidecar.listen"].endswith(":8010")


def test_adoption_and_scraping_match() -> None:
    cmd = shlex.split(compose()["services"]["init"]["command"][-1].split(";")[0])
    assert cmd[:3] == ["pgcohort", "init", "--from-patroni"]
    assert cmd[cmd.index("--policy") + 1] == POLICY
    prom = load("docker/prometheus.yml")
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    assert jobs["pgcohort"] == [f"{n}:8010" for n, _ in NODES]
    assert jobs["patroni"] == [f"{n}:8008" for n, _ in NODES]
    grafana = compose()["services"]["grafana"]["volumes"]
    assert "./dashboards:/var/lib/grafana/dashboards:ro" in grafana
    assert load("docker/grafana/provisioning/dashboards/pgcohort.yml")["providers"][0]["options"]["path"] == (
        "/var/lib/grafana/dashboards"
    )
