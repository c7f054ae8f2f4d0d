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


def test_security_settings_are_checked_together_and_secrets_never_echoed(tmp_path: pathlib.Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {
        "PGCOHORT_CLUSTER": "c",
        "PGCOHORT_ETCD_ENDPOINTS": "http://a:1,https://b:2",
        "PGCOHORT_ETCD_CACERT": str(tmp_path / "missing-ca.pem"),
        "PGCOHORT_ETCD_KEY": str(key),
        "PGCOHORT_ETCD_PASSWORD": "hunter2-secret",
        "PGCOHORT_ETCD_PASSWORD_FILE": str(empty),
        "PGCOHORT_SIDECAR_TLS_CLIENT_CA": str(key),
    }
    with pytest.raises(InvalidInputError) as info:
        config.load({}, env=env)
    text = str(info.value)
    for problem in (
        "etcd.cert and etcd.key go together",
        "sidecar.tls_client_ca needs sidecar.tls_cert",
        "etcd.password and etcd.password_file are both set",
        "an etcd password is set but etcd.user is not",
        "etcd.cacert set, but these etcd endpoints are not https://: http://a:1",
        "etcd.cacert: cannot read",
        f"etcd.password_file: {empty} is empty",
    ):
        assert problem in text, text
    assert "hunter2-secret" not in text
    with pytest.raises(InvalidInputError, match="etcd.user is set but no password"):
        config.load({}, env={"PGCOHORT_CLUSTER": "c", "PGCOHORT_ETCD_USER": "u"})
    with pytest.raises(InvalidInputError) as hidden:
        config.load({}, env={}, file=_yaml(tmp_path, "cluster: c\netcd:\n  password: [not, text, s3cr3t]\n"))
    assert "value not shown" in str(hidden.value) and "s3cr3t" not in str(hidden.value)


def _yaml(tmp_path: pathlib.Path, text: str) -> str:
    f = tmp_path / "c.yml"
    f.write_text(text)
    return str(f)
