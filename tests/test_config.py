"""Configuration: precedence flags > environment > file > defaults, and a validator that lists every problem."""

from __future__ import annotations

import pathlib

import pytest

from pgcohort import config
from pgcohort.errors import InvalidInputError


def test_precedence(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("cluster: from-file\netcd:\n  endpoints: [http://a:1, http://b:2]\n  timeout: 7\n  prefix: /p\n")
    env = {"PGCOHORT_CLUSTER": "from-env", "PGCOHORT_ETCD_TIMEOUT": "4"}
    cfg = config.load({"etcd.timeout": 1.5}, env=env, file=str(f))
    assert cfg["cluster"] == "from-env"  # env beats file
    assert cfg["etcd.timeout"] == 1.5  # flag beats env
    assert cfg["etcd.endpoints"] == ["http://a:1", "http://b:2"]  # file beats default
    assert cfg["etcd.prefix"] == "/p"
    assert cfg["etcd.retry_for"] == 10.0  # default


def test_env_lists_are_comma_separated() -> None:
    cfg = config.load({}, env={"PGCOHORT_CLUSTER": "c", "PGCOHORT_ETCD_ENDPOINTS": "http://a:1, http://b:2"})
    assert cfg["etcd.endpoints"] == ["http://a:1", "http://b:2"]


def test_config_file_named_by_environment(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("cluster: x\n")
    assert config.load({}, env={"PGCOHORT_CONFIG": str(f)})["cluster"] == "x"


def test_every_problem_is_listed_at_once(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("etcd:\n  endpoints: 5\n  timeout: soon\n  colour: blue\n")
    with pytest.raises(InvalidInputError) as info:
        config.load({}, env={"PGCOHORT_ETCD_RETRY_FOR": "-1"}, file=str(f))
    text = str(info.value)
    for problem in ("etcd.endpoints", "etcd.timeout", "'etcd.colour'", "PGCOHORT_ETCD_RETRY_FOR", "cluster: not set"):
        assert problem in text, text
    assert "nothing was started" in text


def test_unreadable_and_invalid_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidInputError, match="No such file"):
        config.load({"cluster": "c"}, env={}, file=str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("etcd: [unclosed\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        config.load({"cluster": "c"}, env={}, file=str(bad))
