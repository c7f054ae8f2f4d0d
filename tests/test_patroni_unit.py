"""Patroni's dynamic configuration as pgcohort reads it, and the adapter choice: no servers."""

from __future__ import annotations

from typing import Any

import pytest

from pgcohort import assembly, config
from pgcohort.errors import InvalidInputError
from pgcohort.seams import Revision
from pgcohort.store.patroni import DynamicConfig


def dynamic(**value: Any) -> DynamicConfig:
    return DynamicConfig(value, Revision(7), "/service/main/config")


@pytest.mark.parametrize(
    "value, refused",
    [
        ({}, False),
        ({"synchronous_mode": False}, False),
        ({"synchronous_mode": "off"}, False),
        ({"synchronous_mode": True}, True),
        ({"synchronous_mode": "on"}, True),
        ({"synchronous_mode": "quorum"}, True),
        ({"synchronous_mode": False, "synchronous_mode_strict": True}, True),
    ],
)
def test_pgcohort_refuses_to_share_the_setting_with_patronis_sync_mode(value: dict[str, Any], refused: bool) -> None:
    problem = dynamic(**value).sync_mode_problem()
    assert (problem is not None) == refused
    if problem:
        assert "synchronous_mode" in problem and "init --from-patroni" in problem and "Nothing was written" in problem


def test_the_setting_is_merged_into_patronis_parameters_with_the_marker() -> None:
    before = dynamic(ttl=20, postgresql={"parameters": {"wal_log_hints": "on"}}, synchronous_mode="quorum")
    after = before.with_setting("ANY 1 (b, c)", "/pgcohort/main/", sync_mode_off=True)
    assert after["postgresql"]["parameters"] == {"wal_log_hints": "on", "synchronous_standby_names": "ANY 1 (b, c)"}
    assert after["synchronous_mode"] is False and after["synchronous_mode_strict"] is False and after["ttl"] == 20
    assert after["pgcohort"] == {"root": "/pgcohort/main/"}
    assert before.value["synchronous_mode"] == "quorum", "the read value was changed in place"
    assert DynamicConfig(after, Revision(8), "k").managed_by == "/pgcohort/main/"
    assert before.managed_by is None and before.setting is None


def test_the_adapter_is_chosen_by_configuration() -> None:
    assert config.adapter(config.load({"cluster": "c"}, env={})) == "postgres"
    assert config.adapter(config.load({"cluster": "c"}, env={"PGCOHORT_PATRONI_URL": "http://h:8008"})) == "patroni"
    assert config.adapter(config.load({"cluster": "c"}, env={"PGCOHORT_SIDECAR_ADAPTER": "patroni"})) == "patroni"
    # Any registered adapter may be named (entry points of group pgcohort.adapters); an unknown one is refused
    # when it is looked up, with the installed ones listed.
    stolon = config.load({"cluster": "c"}, env={"PGCOHORT_SIDECAR_ADAPTER": "stolon"})
    with pytest.raises(InvalidInputError, match=r"no adapter 'stolon' is installed \(installed: .*patroni.*postgres"):
        assembly.adapter(stolon)
    with pytest.raises(InvalidInputError, match="gate.unmanaged"):
        config.load({"cluster": "c"}, env={"PGCOHORT_GATE_UNMANAGED": "maybe"})
