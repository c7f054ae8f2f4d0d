"""docker-compose.yml: valid for docker-compose, and true to the code's settings and topology."""

from __future__ import annotations

import pathlib
import shlex
import subprocess
from typing import Any

import yaml

from pgcohort import config
from pgcohort.core.rules import parse_member
from tests.conftest import need

ROOT = pathlib.Path(__file__).parent.parent


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def test_docker_compose_accepts_it() -> None:
    need("docker-compose", "docker-compose (Debian package)")
    out = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_topology_matches_the_native_stack() -> None:
    services = set(compose()["services"])
    assert {"etcd0", "etcd1", "etcd2", "pg0", "pg1", "pg2", "pg3", "init", "prometheus"} <= services
    assert {f"sidecar-pg{i}" for i in range(4)} <= services


def test_every_pgcohort_variable_is_a_real_setting() -> None:
    known = {s.env for s in config.SCHEMA}
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        for key in env:
            if key.startswith("PGCOHORT_"):
                assert key in known, f"{name}: {key} is not a pgcohort setting"
        if name.startswith("sidecar-"):
            flat = {k: str(v) for k, v in env.items()}
            problems = config.load({}, env=flat, need=("node.name",))  # raises on any invalid value
            assert problems["node.name"] == name.removeprefix("sidecar-")


def test_init_command_is_valid() -> None:
    cmd = compose()["services"]["init"]["command"][-1]
    words = shlex.split(cmd.split(";")[0])
    members = [words[i + 1] for i, w in enumerate(words) if w == "--member"]
    assert [parse_member(m).name for m in members] == ["pg0", "pg1", "pg2", "pg3"]
