"""The `pgcohort` command end to end against a real etcd: output, exit codes, no change on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pgcohort import commands, config
from pgcohort.cli import main
from pgcohort.core import ruleset as core
from pgcohort.core.rules import Member, parse_member
from pgcohort.errors import InvalidInputError, RefusedError
from tests.servers import EtcdCluster

pytestmark = pytest.mark.etcd
BIN = os.path.join(os.path.dirname(sys.executable), "pgcohort")


@pytest.fixture
def env(etcd3: EtcdCluster, cluster_name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "PGCOHORT_CLUSTER": cluster_name,
        "PGCOHORT_ETCD_ENDPOINTS": ",".join(etcd3.endpoints),
        "PGCOHORT_ACTOR": "test",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def pgcohort(*args: str) -> int:
    return main(list(args))


INIT = ["init", "--member", "pg0/a", "--member", "pg1/a", "--member", "pg2/b", "--primary", "pg0"]


def test_member_spec() -> None:
    assert parse_member("pg1@10.0.0.5:5433/zone-a") == Member("pg1", "10.0.0.5", 5433, "zone-a")
    assert parse_member("pg1", host="h", port=7, zone="z") == Member("pg1", "h", 7, "z")
    assert parse_member("pg1@[::1]:5433") == Member("pg1", "[::1]", 5433)
    with pytest.raises(InvalidInputError):
        parse_member("pg1@h:notaport")


def test_walkthrough_and_exit_codes(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert pgcohort("status") == 8  # not initialized
    assert pgcohort(*INIT) == 0
    assert "ANY 1 (pg1, pg2)" in capsys.readouterr().out
    assert pgcohort(*INIT) == 3  # already initialized: refused
    assert pgcohort("add", "pg3", "--zone", "b", "--port", "5435") == 0
    assert pgcohort("add", "pg4") == 3  # joint phase: refused
    assert "already in progress" in capsys.readouterr().err
    assert pgcohort("finalize") == 2  # must name the risk
    assert pgcohort("finalize", "--without-barrier", "--revision", "1") == 4  # stale revision: conflict
    assert pgcohort("finalize", "--without-barrier") == 0
    assert pgcohort("policy", "any 2") == 0
    assert pgcohort("status", "--json") == 0
    capsys.readouterr()
    assert pgcohort("status", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["phase"] == "joint" and doc["version"] == 4
    assert doc["synchronous_standby_names"] == "ANY 2 (pg1, pg2, pg3)"
    assert {r["member"]: r["cohort"] for r in doc["members"]} == {
        "pg0": "member",
        "pg1": "member",
        "pg2": "member",
        "pg3": "member",
    }
    assert pgcohort("history", "--json") == 0
    hist = json.loads(capsys.readouterr().out)
    assert [h["version"] for h in hist] == [1, 2, 3, 4]
    assert pgcohort("watch", "--since", str(hist[0]["revision"]), "--count", "3", "--json") == 0
    seen = [json.loads(line)["ruleset"]["version"] for line in capsys.readouterr().out.splitlines()]
    assert seen == [2, 3, 4]


def test_bad_input_changes_nothing(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert pgcohort(*INIT) == 0
    capsys.readouterr()
    assert pgcohort("history", "--json") == 0
    before = capsys.readouterr().out
    for args, code in [
        (["add", "bad name"], 2),
        (["add", "pg1"], 3),  # duplicate member
        (["add", "PG1"], 3),  # duplicate member (PostgreSQL compares names case-insensitively)
        (["remove", "pg9"], 3),  # unknown member
        (["remove", "pg0"], 3),  # the primary
        (["policy", "any 3"], 3),  # K larger than the standbys
        (["policy", "most"], 2),
        (["policy", "any 0"], 2),
        (["add", "pg3", "--port", "70000"], 2),
    ]:
        assert pgcohort(*args) == code, args
        err = capsys.readouterr().err
        assert err.startswith(f"pgcohort {args[0]}: ") and len(err) > 40, err
    assert pgcohort("history", "--json") == 0
    assert capsys.readouterr().out == before


def test_unavailable_etcd_exit_code(monkeypatch: pytest.MonkeyPatch, cluster_name: str) -> None:
    monkeypatch.setenv("PGCOHORT_CLUSTER", cluster_name)
    monkeypatch.setenv("PGCOHORT_ETCD_RETRY_FOR", "1")
    assert pgcohort("status", "--etcd", "http://127.0.0.1:1", "--timeout", "0.3") == 5


def test_invalid_configuration_exit_code(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCOHORT_CLUSTER", raising=False)
    assert pgcohort("status", "--etcd", "http://127.0.0.1:1") == 2
    assert "cluster: not set" in capsys.readouterr().err


def test_console_script_and_help(env: dict[str, str]) -> None:
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
    for word in (
        "init",
        "add",
        "remove",
        "policy",
        "status",
        "history",
        "watch",
        "PGCOHORT_ETCD_ENDPOINTS",
        "exit codes",
    ):
        assert word in out
    proc = subprocess.run([BIN, "status"], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 8 and "pgcohort init" in proc.stderr


def test_commands_are_functions_the_cli_only_prints(env: dict[str, str]) -> None:
    """What a command does is a function of a configuration (pgcohort.commands); the CLI parses and prints."""
    cfg = config.load({})
    with pytest.raises(RefusedError, match="no ruleset"):
        commands.gate_check(cfg, "pg1")  # no ruleset: the gate vetoes, and says how to adopt the cluster
    lines = commands.init(cfg, ["pg0/a", "pg1/a", "pg2/b"], "pg0", "any 1")
    assert lines[-1] == "synchronous_standby_names: ANY 1 (pg1, pg2)"
    done = commands.propose(cfg, core.AddMember(parse_member("pg3/b")))
    assert done.snapshot.ruleset.phase == "joint" and done.snapshot.ruleset.version == 2
    with pytest.raises(InvalidInputError, match="no adapter 'nonesuch' is installed"):
        commands.failover(config.load({"sidecar.adapter": "nonesuch"}), "pg1")
    verdict = commands.gate_check(cfg, "pg0")  # the primary the term names: its own term, nothing new
    assert verdict.outcome is None and "pg0" in verdict.message
