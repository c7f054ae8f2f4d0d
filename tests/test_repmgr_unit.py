"""The repmgr adapter without servers: it implements the seams (checked by mypy here), its hook's capabilities,
the gate's one stdout line, its configuration, and what it reads from repmgr's files and metadata."""

from __future__ import annotations

import pathlib

import pytest

from pgcohort import cli, commands, config
from pgcohort.adapters import patroni, postgres, repmgr
from pgcohort.assembly import Adapter, registered
from pgcohort.errors import InvalidInputError
from pgcohort.seams import Hook, Node

ADAPTERS: tuple[Adapter, ...] = (postgres.ADAPTER, patroni.ADAPTER, repmgr.ADAPTER)  # mypy: each is an Adapter


def _is_a_node(n: repmgr.RepmgrNode) -> Node:
    return n  # mypy: RepmgrNode implements the Node seam


def test_each_adapter_says_how_its_ha_manager_runs_the_gate() -> None:
    assert postgres.ADAPTER.hook == patroni.ADAPTER.hook == Hook()  # Patroni's pre_promote: the defaults
    assert repmgr.ADAPTER.hook == Hook(one_line=True, hand_over=True, steer=True)
    assert registered("repmgr") is repmgr.ADAPTER
    assert [a.adoption for a in ADAPTERS] == [
        "pgcohort init --member NAME@HOST:PORT ... --primary NAME",
        "pgcohort init --from-patroni URL",
        "pgcohort init --from-repmgr CONNINFO",
    ]
    assert repmgr.ADAPTER.promotes() is None  # `pgcohort failover` works beside repmgr


def test_under_a_one_line_hook_the_gate_writes_one_stdout_line_last_and_its_report_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    said = "term 3 already names pg1 as the primary (seen running): it takes its own leader key; no new term written"

    def gate_check(cfg: config.Config, candidate: str | None, *, allow_data_loss: bool = False) -> commands.Verdict:
        return commands.Verdict(message=said, one_line=True)

    monkeypatch.setattr(commands, "gate_check", gate_check)
    assert cli.main(["gate", "--cluster", "c", "--candidate", "pg1"]) == 0
    out, err = capsys.readouterr()
    assert out == f"pgcohort gate: allowed: {said}\n"  # the one line repmgr reads
    assert said in err
    monkeypatch.setattr(commands, "gate_check", lambda *a, **k: commands.Verdict(message=said))
    assert cli.main(["gate", "--cluster", "c", "--candidate", "pg1"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (said + "\n", "")  # Patroni's pre_promote: as before


def test_the_repmgr_settings_and_their_environment_variables() -> None:
    cfg = config.load({"cluster": "c"}, env={"PGCOHORT_REPMGR_DBNAME": "meta", "PGCOHORT_SIDECAR_ADAPTER": "repmgr"})
    assert (cfg["repmgr.dbname"], cfg["repmgr.config_file"], config.adapter(cfg)) == ("meta", None, "repmgr")
    assert config.load({"cluster": "c"}, env={})["repmgr.dbname"] == "repmgr"
    assert "PGCOHORT_REPMGR_CONFIG_FILE" in config.describe()


def test_a_members_priority_comes_from_its_repmgr_conf(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "repmgr.conf"
    conf.write_text("node_id=2\nnode_name='pg1'\npriority=40\nlocation='default'\n")
    node = repmgr.RepmgrNode("host=127.0.0.1 port=1", name="pg1", options="", config_file=str(conf))
    try:
        assert node._priority() == 40
        conf.write_text("node_id=2\n")
        assert node._priority() == repmgr.DEFAULT_PRIORITY == 100
        node.config_file = str(tmp_path / "missing.conf")
        with pytest.raises(InvalidInputError, match="cannot read repmgr.config_file"):
            node._priority()
    finally:
        node.close()


def test_a_node_repmgr_reaches_by_a_unix_socket_is_refused_with_its_fix() -> None:
    def record(conninfo: str) -> repmgr.Record:
        return repmgr.Record(3, "pg2", "standby", 1, True, 100, "default", conninfo)

    assert repmgr.address(record("host=10.0.1.3 port=5433 user=repmgr dbname=repmgr")) == ("10.0.1.3", 5433)
    assert repmgr.address(record("hostaddr=10.0.1.3 user=repmgr")) == ("10.0.1.3", 5432)
    with pytest.raises(InvalidInputError, match="a Unix socket .* host=ADDRESS"):
        repmgr.address(record("host=/var/run/postgresql user=repmgr"))


def test_metadata_sessions_never_wait_for_synchronous_standbys() -> None:
    meta = repmgr.metadata("host=h port=5 user=u dbname=postgres options='-c search_path=x'", "repmgr")
    try:
        assert "dbname=repmgr" in meta.session.dsn
        assert "-c search_path=x -c synchronous_commit=local" in meta.session.dsn
    finally:
        meta.close()
