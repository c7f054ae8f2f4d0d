"""Bad data in etcd under running sidecars (real etcd, PostgreSQL 15 with three streaming standbys).

Garbage and invariant-breaking records are planted behind pgcohort's back: every sidecar and command
refuses them with a clear error and an alerting metric, the primary keeps enforcing the last good
setting, no term is written, and ``pgcohort restore`` brings the cluster back through the protocol.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable

import pytest

from pgcohort.core import ruleset as core
from pgcohort.core.rules import AnyK, Rule
from pgcohort.store import EtcdStore
from tests.stack import BIN, Stack

pytestmark = [pytest.mark.etcd, pytest.mark.pg, pytest.mark.fault, pytest.mark.slow]

GOOD = "ANY 1 (pg1, pg2)"  # after pg3's removal; version 1 (with pg3) is in the history


def cli(st: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGCOHORT_CLUSTER": st.cluster, "PGCOHORT_ETCD_ENDPOINTS": ",".join(st.endpoints)}
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=60)


def raw(store: EtcdStore, key: str) -> dict[str, str]:
    kvs, _ = store.transport.range(key)
    return kvs[0] if kvs else {}


def raw_value(store: EtcdStore, key: str) -> bytes:
    return base64.b64decode(raw(store, key)["value"])


def forged(store: EtcdStore, rule: Rule) -> bytes:
    """A well-formed ruleset whose version is the key's next write count: it passes the write-count check,
    so only the invariant across ruleset and term can catch it."""
    version = int(raw(store, store.records.ruleset_key)["version"]) + 1
    return core.encode(core.Ruleset(version, rule, None, "mallory", "", "forged", "mallory/1"))


def test_bad_records_are_refused_and_the_last_good_setting_stays(running_stack: Stack) -> None:
    st = running_stack
    etcd, store = st.etcd_cluster, st.store()
    rs_key, term_key = store.records.ruleset_key, store.records.term_key
    cohort = store.read().ruleset.rule.cohort
    car = st.sidecars["pg0"]
    assert cli(st, "remove", "pg3").returncode == 0
    st.wait("the removal applied and finalized", lambda: st.primary_setting() == GOOD
            and store.read().ruleset.phase == "stable")  # fmt: skip
    good = store.read().ruleset
    cases: list[tuple[str, Callable[[], object], str, str]] = [
        ("garbage", lambda: etcd.put_raw(rs_key, b"\x00 not json"), "ruleset", "is not a valid pgcohort ruleset"),
        (
            "K above the electorate",
            lambda: etcd.put_raw(rs_key, forged(store, Rule(AnyK(4), cohort))),
            "ruleset",
            "contradict each other: policy 'any 4' needs 4 standbys",
        ),
        (
            "a cohort without the term's primary",
            lambda: etcd.put_raw(rs_key, forged(store, Rule(AnyK(1), tuple(m for m in cohort if m.name != "pg0")))),
            "ruleset",
            "the primary 'pg0' must be in the cohort",
        ),
        (  # a valid, older record put back (a stale backup): acted on, it would count pg3 again unasked
            "a version going backwards",
            lambda: etcd.put_raw(rs_key, raw_value(store, store.records.history_key(1))),
            "ruleset",
            "says version 1, but etcd counts",
        ),
        ("a garbage term", lambda: etcd.put_raw(term_key, b'{"term": "two"}'), "term", "is not a valid pgcohort term"),
        (
            "a term going backwards",
            lambda: etcd.put_raw(term_key, raw_value(store, store.records.term_history_key(1))),
            "term",
            "says term 1, but etcd counts",
        ),
    ]
    for what, plant, record, message in cases:
        term_before = raw(store, term_key).get("value")
        history_before = len(store.history())
        plant()
        time.sleep(1.5)  # three sidecar rounds, and the watch delivered it at once: nothing is done from it
        assert st.primary_setting() == GOOD, f"{what}: the sidecar acted on it, the setting moved"
        st.wait(
            f"pg0's sidecar to refuse {what}",
            lambda message=message: message in " ".join(car.get("/health")[1].get("problems", [])),
        )
        assert car.get("/health")[0] == 503
        metrics = car.get("/metrics")[1]
        assert f'pgcohort_invalid_record{{record="{record}"}} 1.0' in metrics, what
        for args in (["add", "pg9"], ["status"], ["gate", "--candidate", "pg1"], ["policy", "any 2"]):
            done = cli(st, *args)
            assert done.returncode == 7, f"{what}: {args} exited {done.returncode}: {done.stderr}"
            assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        if record == "ruleset":
            assert raw(store, term_key).get("value") == term_before, f"{what}: a term was written"
        assert len(store.history()) == history_before, f"{what}: the history grew"
        assert st.primary_setting() == GOOD, f"{what}: the setting moved"
        assert car.get("/health")[0] == 503

        done = cli(st, "restore")
        assert done.returncode == 0, done.stderr
        assert f"restored {'ruleset' if record == 'ruleset' else 'term'}" in done.stdout, done.stdout
        st.wait(f"pg0's sidecar healthy after restoring from {what}", lambda: car.get("/health")[0] == 200)
        assert f'pgcohort_invalid_record{{record="{record}"}} 0.0' in car.get("/metrics")[1]
        assert st.primary_setting() == GOOD
        refused = cli(st, "restore")
        assert refused.returncode == 3 and "nothing to restore" in refused.stderr

    restores = [rs for _, rs in store.history() if rs.reason.startswith("restore version")]
    assert len(restores) == 4 and all(rs.rule == good.rule and rs.phase == "stable" for rs in restores)
    last_term = store.term_history()[-1][1]
    assert last_term.primary == "pg0" and last_term.term == int(raw(store, term_key)["version"]) == 5

    etcd.put_raw(store.registry.key("pg9"), b"[garbage")  # a node record nobody acts on
    status = cli(st, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["member"]: r for r in json.loads(status.stdout)["members"]}
    assert "not a valid node record" in rows["pg9"]["problem"] and rows["pg9"]["cohort"] == "candidate"

    assert cli(st, "add", f"pg3@127.0.0.1:{st.pg.nodes['pg3'].port}/zone-b").returncode == 0  # works again
    st.wait("the add applied and finalized", lambda: st.primary_setting() == "ANY 1 (pg1, pg2, pg3)"
            and store.read().ruleset.phase == "stable")  # fmt: skip

    etcd.put_raw(store.records.history_key(1), b"garbage")
    done = cli(st, "history")
    assert done.returncode == 7 and "history/0000000001" in done.stderr, done.stderr
