"""Fuzzing (hypothesis): every record decoder and the command line take any input without a traceback,
and bad input changes no state.

* Decoders: raw bytes, arbitrary JSON, and valid records with one field replaced or removed. A ruleset
  or term either decodes to a value that keeps the invariants or raises InvalidRecordError; node and
  gate-decision records never raise (a bad one carries its problem); Patroni's configuration either
  decodes to a value whose accessors work or raises InvalidInputError.
* Configuration: any value for any setting is accepted or refused with InvalidInputError.
* The CLI, against a real etcd: any argument list ends with an exit code (argparse's 2 included) and no
  traceback; when the exit code is not 0, no key of the cluster changed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgcohort import cli, config, protocol
from pgcohort.core import decision, node
from pgcohort.core import ruleset as core
from pgcohort.core import term as term_core
from pgcohort.core.rules import AnyK, CrossZone, Member, Rule
from pgcohort.errors import InvalidInputError, InvalidRecordError
from pgcohort.seams import Revision
from pgcohort.store import EtcdStore
from pgcohort.store.patroni import DynamicConfig
from tests.conftest import need
from tests.servers import ETCD, EtcdCluster, free_ports

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)

RULE = Rule(AnyK(1), (Member("pg0", "h", 5432, "a"), Member("pg1", "h", 5433, "b"), Member("pg2", "h", 5434, "b")))
RULESETS = [
    core.to_record(core.Ruleset(3, RULE, None, "me", "now", "r", "w/1")),
    core.to_record(core.Ruleset(4, Rule(CrossZone(), RULE.cohort), RULE, "me", "now", "policy cross-zone", "w/2")),
]
TERM = term_core.term_to_record(term_core.Term(2, "pg1", 7, 123, "gate@pg1", "now", "w/3"))
NODE = json.loads(node.encode(node.NodeRecord("pg1", "b", "h", 5433, "replica", 99, 3)))
DECISION = json.loads(decision.encode(decision.GateDecision("pg1", "refused", 0.5, "now", 2, "why")))


def mutated(record: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The record with one field (at any depth) replaced by arbitrary JSON, or removed."""
    paths: list[tuple[Any, ...]] = []

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))

    walk(record, ())

    def apply(path: tuple[Any, ...], new: Any, remove: bool) -> dict[str, Any]:
        out: Any = json.loads(json.dumps(record))
        if not path:
            return new if isinstance(new, dict) else {"wrapped": new}
        target = out
        for step in path[:-1]:
            target = target[step]
        if remove and isinstance(target, dict):
            del target[path[-1]]
        else:
            target[path[-1]] = new
        result: dict[str, Any] = out
        return result

    return st.builds(apply, st.sampled_from(paths), JSON, st.booleans())


def inputs(record: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return (
        st.binary(max_size=200)
        | JSON.map(lambda v: json.dumps(v).encode())
        | mutated(record).map(lambda v: json.dumps(v).encode())
    )


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(RULESETS).flatmap(inputs))
def test_the_ruleset_decoder(raw: bytes) -> None:
    try:
        rs = core.decode(raw, "ruleset")
    except InvalidRecordError as e:
        assert "Nothing was changed" in str(e) and e.record == "ruleset"
        return
    core.check_invariants(rs)
    assert core.decode(core.encode(rs), "again") == rs


@pytest.mark.parametrize("field, value", [("port", 5432.0), ("port", True), ("name", None), ("zone", 7)])
def test_the_decoders_cache_of_rules_never_admits_a_lookalike(field: str, value: Any) -> None:
    """Decoding reuses validated rules; 5432.0 and True equal 5432 and 1 in Python, yet stay refused."""
    good = RULESETS[0]
    assert core.decode(json.dumps(good).encode(), "warm") is not None  # the rule is now cached
    bad: Any = json.loads(json.dumps(good))
    bad["rule"]["cohort"][0][field] = value
    with pytest.raises(InvalidRecordError, match=f"'{field}' has the wrong type"):
        core.decode(json.dumps(bad).encode(), "lookalike")


@settings(max_examples=300, deadline=None)
@given(inputs(TERM))
def test_the_term_decoder(raw: bytes) -> None:
    try:
        t = term_core.decode_term(raw, "term")
    except InvalidRecordError as e:
        assert e.record == "term"
        return
    assert t.term >= 1 and term_core.decode_term(term_core.encode_term(t), "again") == t


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70), inputs(NODE))
def test_the_node_record_decoder_never_raises(name: str, raw: bytes) -> None:
    rec = node.decode(name, raw)
    assert rec.problem or rec.member() is None or rec.member() is not None
    if rec.problem:
        assert rec.member() is None  # a bad record is never admitted


@settings(max_examples=300, deadline=None)
@given(inputs(DECISION))
def test_the_gate_decision_decoder_never_raises(raw: bytes) -> None:
    d = decision.decode(raw)
    assert d is None or d.result in decision.RESULTS


@settings(max_examples=300, deadline=None)
@given(
    JSON
    | mutated({"synchronous_mode": False, "postgresql": {"parameters": {"synchronous_standby_names": "x"}}})
    | mutated({"pgcohort": {"root": "/pgcohort/c/"}, "synchronous_mode_strict": True})
)
def test_patronis_configuration_decoder(value: Any) -> None:
    """Patroni's config key is written by people (patronictl edit-config) too: anything is refused or handled."""
    from pgcohort.store.patroni import PatroniConfigKey

    kv = {"mod_revision": "5", "value": __import__("base64").b64encode(json.dumps(value).encode()).decode()}
    key = PatroniConfigKey.__new__(PatroniConfigKey)
    key.key = "/service/c/config"
    try:
        cfg = key._decode(kv)
    except InvalidInputError:
        return
    assert cfg.setting is None or isinstance(cfg.setting, str)
    assert cfg.sync_mode_problem() is None or "Nothing was written" in str(cfg.sync_mode_problem())
    assert cfg.managed_by is None or isinstance(cfg.managed_by, str)
    assert DynamicConfig(cfg.with_setting("ANY 1 (a)", "/r/"), Revision(5), "k").setting == "ANY 1 (a)"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([s.env for s in config.SCHEMA]), st.text(max_size=30)), max_size=6))
@example([("PGCOHORT_NODE_PORT", "inf")])  # found by CI: int(float('inf')) overflowed
@example([("PGCOHORT_ETCD_TIMEOUT", "nan"), ("PGCOHORT_SIDECAR_INTERVAL", "1e400")])
def test_any_configuration_value_is_accepted_or_refused(pairs: list[tuple[str, str]]) -> None:
    env = {"PGCOHORT_CLUSTER": "c", **dict(pairs)}
    try:
        config.load({}, env=env)
    except InvalidInputError as e:
        assert "nothing was started" in str(e)
        values = [v for _, v in pairs]
        for k, v in pairs:
            secret = k in ("PGCOHORT_ETCD_PASSWORD", "PGCOHORT_PATRONI_API_AUTH")
            if secret and len(v) > 3 and values.count(v) == 1 and v not in "PGCOHORT_CLUSTER c":
                assert repr(v) not in str(e)


# --- the command line, against a real etcd ------------------------------------------------------------

COMMANDS = ["init", "add", "remove", "policy", "status", "history", "finalize", "failover", "gate", "restore"]
OPTIONS = ["--member", "--primary", "--policy", "--from-patroni", "--host", "--port", "--zone", "--json", "--terms",
           "--candidate", "--allow-data-loss", "--without-barrier", "--revision", "--cluster", "--prefix",
           "--timeout", "--config", "--etcd", "--name", "--since", "--count", "-h"]  # fmt: skip
WORDS = st.sampled_from(
    OPTIONS + ["pg0", "pg1", "pg9", "any 1", "any 0", "any -1", "cross-zone", "pg9@127.0.0.1:1/z", "/service/x",
               "", "-", "--", "1e9", "-5", "nan", "x" * 70, "pg/0", "PG1", "http://127.0.0.1:1", "/nonexistent",
               "[", "http://a:xx", "http:// ", "https://[::1"]
) | st.text(max_size=12)  # fmt: skip


WELL_FORMED = [["status"], ["status", "--json"], ["history"], ["history", "--terms"], ["add", "pg9"],
               ["remove", "pg1"], ["policy", "any 2"], ["gate", "--candidate", "pg1"], ["failover"], ["restore"],
               ["finalize", "--without-barrier"], ["init", "--member", "a", "--member", "b", "--primary", "a"]]  # fmt: skip
NUMBERS = st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e400", "1e9", "0.0001", "18446744073709551616", "0x10"])


@pytest.fixture(scope="module")
def fuzz_etcd() -> Iterator[EtcdCluster]:
    need(ETCD, "etcd-server")
    cluster = EtcdCluster(1).start()
    yield cluster
    cluster.close()


def keys(store: EtcdStore) -> dict[str, int]:
    """Every key of the cluster but the gate's decisions (status it records even when it refuses)."""
    kvs, _ = store.transport.range(store.root, prefix=True)
    out = {}
    for kv in kvs:
        key = __import__("base64").b64decode(kv["key"]).decode()
        if "/decisions/" not in key:
            out[key] = int(kv["mod_revision"])
    return out


def options_of(command: str) -> list[str]:
    """The options ``command`` really takes, from the parser itself (so most generated lines parse)."""
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sorted(o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help"))


def command_lines() -> st.SearchStrategy[list[str]]:
    def with_options(base: list[str]) -> st.SearchStrategy[list[str]]:
        pairs = st.lists(st.tuples(st.sampled_from(options_of(base[0])), NUMBERS | WORDS), max_size=3)
        return pairs.map(lambda ps: base + [w for p in ps for w in p])

    random = st.tuples(st.sampled_from(COMMANDS), st.lists(WORDS | st.sampled_from(OPTIONS), max_size=4))
    return (st.sampled_from(WELL_FORMED) | random.map(lambda t: [t[0], *t[1]])).flatmap(with_options)


@pytest.mark.etcd
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_ends_with_an_exit_code_and_bad_input_changes_nothing(
    fuzz_etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    ports = free_ports(3)  # members nobody listens on: a failover's survey is refused at once
    store = EtcdStore(fuzz_etcd.endpoints, "fz", timeout=1, retry_for=0.5)
    try:
        store.read()
    except Exception:  # noqa: BLE001 (first example, or a cluster an example re-initialized)
        rule = Rule(AnyK(1), tuple(Member(f"pg{i}", "127.0.0.1", p, "z") for i, p in enumerate(ports)))
        with contextlib.suppress(Exception):
            protocol.init(store, rule, "pg0", actor="fuzz")
    for name, value in {
        "PGCOHORT_CLUSTER": "fz",
        "PGCOHORT_ETCD_ENDPOINTS": ",".join(fuzz_etcd.endpoints),
        "PGCOHORT_ETCD_TIMEOUT": "1",
        "PGCOHORT_ETCD_RETRY_FOR": "0.5",
        "PGCOHORT_POSTGRES_MEMBER_OPTIONS": "user=postgres dbname=postgres connect_timeout=1",
        "PGCOHORT_ACTOR": "fuzz",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("PGCOHORT_CONFIG", "PGCOHORT_NODE_NAME"):
        monkeypatch.delenv(name, raising=False)
    command, words = argv[0], argv[1:]
    before = keys(store)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([command, *words])
        except SystemExit as e:  # argparse: usage errors (2) and --help (0)
            code = e.code if isinstance(e.code, int) else 2
    assert isinstance(code, int)
    assert "Traceback" not in err.getvalue()
    if code != 0:
        assert keys(store) == before, f"{[command, *words]} exited {code} but changed etcd: {err.getvalue()}"
    store.close()
