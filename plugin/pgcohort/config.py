"""Configuration: one schema, three sources, the same for every command.

Precedence, highest first: command-line flags, environment variables, the YAML file
(``--config FILE`` or ``PGCOHORT_CONFIG``), built-in defaults. Every YAML key has an
environment variable ``PGCOHORT_<SECTION>_<KEY>`` (``etcd.endpoints`` ->
``PGCOHORT_ETCD_ENDPOINTS``; lists are comma-separated there). The validator reports
every problem at once, before anything starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from pgcohort.errors import InvalidInputError


@dataclass(frozen=True)
class Setting:
    path: tuple[str, ...]
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    secret: bool = False  # never shown back in an error message
    zero_means_off: bool = False  # a number of seconds that may be 0

    @property
    def env(self) -> str:
        return "PGCOHORT_" + "_".join(self.path).upper()

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


SCHEMA: tuple[Setting, ...] = (
    Setting(("cluster",), str, None, "cluster name; keys live under <etcd.prefix>/<cluster>/"),
    Setting(("etcd", "endpoints"), list, ["http://127.0.0.1:2379"], "etcd client URLs, tried in turn"),
    Setting(("etcd", "prefix"), str, "/pgcohort", "key prefix (never under Patroni's /service/)"),
    Setting(("etcd", "timeout"), float, 3.0, "seconds per etcd request"),
    Setting(("etcd", "retry_for"), float, 10.0, "seconds to keep retrying other endpoints"),
    Setting(("etcd", "user"), str, None, "etcd user (token auth); empty for none"),
    Setting(("etcd", "password"), str, None, "etcd password (environment or file only: there is no flag)", secret=True),
    Setting(("etcd", "password_file"), str, None, "file holding the etcd password; re-read at each token renewal"),
    Setting(("etcd", "cacert"), str, None, "CA bundle that signed etcd's server certificates (https endpoints)"),
    Setting(("etcd", "cert"), str, None, "client certificate (PEM) for etcd's --client-cert-auth"),
    Setting(("etcd", "key"), str, None, "the client certificate's private key (PEM)"),
    Setting(("node", "name"), str, None, "this node's member name (= its application_name); sidecar, leave"),
    Setting(("node", "zone"), str, "default", "this node's zone"),
    Setting(("node", "host"), str, "127.0.0.1", "address other members reach this node's PostgreSQL at"),
    Setting(("node", "port"), int, 5432, "port of this node's PostgreSQL, as others reach it"),
    Setting(
        ("postgres", "dsn"), str, "host=127.0.0.1 port=5432 user=postgres dbname=postgres", "libpq DSN the sidecar uses"
    ),
    Setting(
        ("postgres", "member_options"),
        str,
        "user=postgres dbname=postgres connect_timeout=3",
        "libpq options for reaching other members (host and port come from the ruleset); failover, gate",
    ),
    Setting(("sidecar", "listen"), str, "127.0.0.1:8010", "HOST:PORT of /health, /ruleset, /metrics (read-only)"),
    Setting(("sidecar", "tls_cert"), str, None, "serve HTTPS with this certificate (PEM) instead of HTTP"),
    Setting(("sidecar", "tls_key"), str, None, "the HTTPS certificate's private key (PEM)"),
    Setting(("sidecar", "tls_client_ca"), str, None, "require HTTPS clients to show a certificate signed by this CA"),
    Setting(("sidecar", "interval"), float, 1.0, "seconds between checks (changes are acted on at once)"),
    Setting(("sidecar", "ttl"), int, 10, "seconds the nodes/<name> record outlives a dead sidecar"),
    Setting(("sidecar", "barrier_timeout"), float, 10.0, "seconds to wait for a barrier's acknowledgement"),
    Setting(("sidecar", "auto_admit"), bool, False, "propose caught-up registered standbys as members"),
    Setting(
        ("sidecar", "admit_max_lag"), int, 16 * 1024 * 1024, "bytes behind the primary a standby may be to be admitted"
    ),
    Setting(("sidecar", "admit_stable_for"), float, 10.0, "seconds a standby must stay caught up before admission"),
    Setting(
        ("sidecar", "heal_after"),
        float,
        30.0,
        "seconds a member may stop streaming from the primary before it is benched (taken out of the rule by an "
        "ordinary change, admitted again once caught up); 0 turns healing off",
        zero_means_off=True,
    ),
    Setting(("sidecar", "leave_timeout"), float, 30.0, "seconds `leave` waits for its removal to be finalized"),
    Setting(
        ("sidecar", "leave_on_stop"),
        bool,
        False,
        "on SIGTERM, remove this node from the cohort before stopping (scale-down); off: a restart keeps its member",
    ),
    Setting(
        ("sidecar", "adapter"),
        str,
        "auto",
        "what manages the node: a registered adapter (postgres, patroni, repmgr; entry points of group "
        "pgcohort.adapters), or auto (patroni when patroni.url is set, else postgres)",
    ),
    Setting(("patroni", "url"), str, None, "this node's Patroni REST API (restapi.connect_address)"),
    Setting(("patroni", "scope"), str, None, "Patroni's scope (default: the cluster name)"),
    Setting(("patroni", "namespace"), str, "/service", "Patroni's namespace in etcd"),
    Setting(("patroni", "config_dir"), str, None, "Patroni's configuration directory, for the nofailover tags file"),
    Setting(("patroni", "cacert"), str, None, "CA that signed Patroni's REST API certificate (an https patroni.url)"),
    Setting(("patroni", "cert"), str, None, "client certificate (PEM) when Patroni's restapi.verify_client asks"),
    Setting(("patroni", "key"), str, None, "the Patroni client certificate's private key (PEM)"),
    Setting(
        ("patroni", "api_auth"),
        str,
        None,
        "USER:PASSWORD for Patroni's REST API (restapi.authentication)",
        secret=True,
    ),
    Setting(
        ("repmgr", "dbname"),
        str,
        "repmgr",
        "database holding repmgr's metadata (repmgr.nodes, repmgr.events), reached with postgres.dsn and "
        "postgres.member_options and this dbname",
    ),
    Setting(
        ("repmgr", "config_file"),
        str,
        None,
        "this node's repmgr.conf: its 'priority' is what the sidecar gives the node back in repmgr.nodes while it "
        "is a member (non-members get 0; without the file, 100)",
    ),
    Setting(
        ("gate", "unmanaged"),
        str,
        "refuse",
        "gate for a cluster with no ruleset: refuse (veto, say why) or allow (Patroni decides alone)",
        ("refuse", "allow"),
    ),
)


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]

    def __getitem__(self, dotted: str) -> Any:
        return self.values[dotted]


def adapter(cfg: Config) -> str:
    """The adapter ``sidecar.adapter`` names, with ``auto`` resolved (:func:`pgcohort.assembly.registered` finds it)."""
    chosen = str(cfg["sidecar.adapter"])
    if chosen == "auto":
        return "patroni" if cfg["patroni.url"] else "postgres"
    return chosen


def _coerce(s: Setting, raw: Any, source: str, problems: list[str]) -> Any:
    if raw is None:
        return None
    if s.secret:
        if not isinstance(raw, str) or not raw:
            problems.append(f"{s.dotted} ({source}): expected non-empty text (value not shown)")
            return None
        return raw
    if s.kind is list:
        if isinstance(raw, str):
            raw = [p.strip() for p in raw.split(",") if p.strip()]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw) or not raw:
            problems.append(f"{s.dotted} ({source}): expected a non-empty list of strings, got {raw!r}")
            return None
        return raw
    if s.kind is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        problems.append(f"{s.dotted} ({source}): expected true or false, got {raw!r}")
        return None
    if s.kind is int:
        try:
            if isinstance(raw, bool) or float(raw) != int(float(raw)):
                raise ValueError
            number = int(float(raw))
        except (TypeError, ValueError, OverflowError):  # OverflowError: inf
            problems.append(f"{s.dotted} ({source}): expected a whole number, got {raw!r}")
            return None
        if number < 0:
            problems.append(f"{s.dotted} ({source}): must be >= 0, got {raw!r}")
            return None
        return number
    if s.kind is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            problems.append(f"{s.dotted} ({source}): expected a number, got {raw!r}")
            return None
        if not (value >= 0 if s.zero_means_off else value > 0) or not value <= 86400:  # also nan and inf
            low = ">= 0 (0: off)" if s.zero_means_off else "> 0"
            problems.append(f"{s.dotted} ({source}): must be a number of seconds {low} and <= 86400, got {raw!r}")
            return None
        return value
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        problems.append(f"{s.dotted} ({source}): expected text, got {raw!r}")
        return None
    if s.choices and str(raw) not in s.choices:
        problems.append(f"{s.dotted} ({source}): expected one of {', '.join(s.choices)}, got {raw!r}")
        return None
    return str(raw)


def _flatten(doc: Any, problems: list[str], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    if not isinstance(doc, dict):
        problems.append(f"{'.'.join(path) or 'the file'}: expected a mapping")
        return out
    for k, v in doc.items():
        key = path + (str(k),)
        if isinstance(v, dict):
            out.update(_flatten(v, problems, key))
        else:
            out[key] = v
    return out


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    file: str | None = None,
    *,
    need: tuple[str, ...] = (),
) -> Config:
    """Merge the sources; ``flags`` maps dotted keys to values given on the command line.

    ``need`` names settings that have no default but the calling command requires.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    file = file or env.get("PGCOHORT_CONFIG")
    from_file: dict[tuple[str, ...], Any] = {}
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                from_file = _flatten(yaml.safe_load(f) or {}, problems)
        except (OSError, ValueError) as e:  # ValueError: a NUL in the path
            problems.append(f"config file {file!r}: {getattr(e, 'strerror', None) or e}")
        except yaml.YAMLError as e:
            problems.append(f"config file {file}: not valid YAML ({str(e).splitlines()[0]})")
        known = {s.path for s in SCHEMA}
        problems += [f"config file {file}: unknown key {'.'.join(k)!r}" for k in from_file if k not in known]
    values: dict[str, Any] = {}
    for s in SCHEMA:
        if flags.get(s.dotted) is not None:
            values[s.dotted] = _coerce(s, flags[s.dotted], "flag", problems)
        elif env.get(s.env):
            values[s.dotted] = _coerce(s, env[s.env], s.env, problems)
        elif s.path in from_file:
            values[s.dotted] = _coerce(s, from_file[s.path], f"file {file}", problems)
        else:
            values[s.dotted] = s.default
    for dotted in ("cluster", *need):
        if values.get(dotted) is None or values.get(dotted) == "":
            s = next(x for x in SCHEMA if x.dotted == dotted)
            problems.append(f"{dotted}: not set (use {s.env} or '{dotted}' in the config file)")
    problems += _cross_checks(values)
    if problems:
        raise InvalidInputError("invalid configuration; nothing was started:\n  " + "\n  ".join(problems))
    return Config(values)


FILES = ("etcd.password_file", "etcd.cacert", "etcd.cert", "etcd.key", "sidecar.tls_cert", "sidecar.tls_key",
         "sidecar.tls_client_ca", "patroni.cacert", "patroni.cert", "patroni.key")  # fmt: skip


def _cross_checks(v: Mapping[str, Any]) -> list[str]:
    """Problems no single setting shows: pairs that go together, files that must be readable."""
    problems = []
    for a, b in (("etcd.cert", "etcd.key"), ("sidecar.tls_cert", "sidecar.tls_key"), ("patroni.cert", "patroni.key")):
        if bool(v.get(a)) != bool(v.get(b)):
            problems.append(f"{a} and {b} go together: set both or neither")
    if v.get("sidecar.tls_client_ca") and not v.get("sidecar.tls_cert"):
        problems.append("sidecar.tls_client_ca needs sidecar.tls_cert and sidecar.tls_key (HTTPS) as well")
    if v.get("etcd.password") and v.get("etcd.password_file"):
        problems.append("etcd.password and etcd.password_file are both set: keep one")
    has_password = bool(v.get("etcd.password") or v.get("etcd.password_file"))
    if v.get("etcd.user") and not has_password:
        problems.append("etcd.user is set but no password: set PGCOHORT_ETCD_PASSWORD or etcd.password_file")
    if has_password and not v.get("etcd.user"):
        problems.append("an etcd password is set but etcd.user is not")
    patroni_tls = [k for k in ("patroni.cacert", "patroni.cert") if v.get(k)]
    if patroni_tls and v.get("patroni.url") and not str(v["patroni.url"]).startswith("https://"):
        problems.append(f"{' and '.join(patroni_tls)} set, but patroni.url is not https://: {v['patroni.url']}")
    tls = [k for k in ("etcd.cacert", "etcd.cert") if v.get(k)]
    plain = [e for e in v.get("etcd.endpoints") or [] if not str(e).startswith("https://")]
    if tls and plain:
        problems.append(f"{' and '.join(tls)} set, but these etcd endpoints are not https://: {', '.join(plain)}")
    for key in FILES:
        path = v.get(key)
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                if not f.read(1):
                    problems.append(f"{key}: {path} is empty")
        except (OSError, ValueError) as e:  # ValueError: a NUL in the path
            problems.append(f"{key}: cannot read {path!r} ({getattr(e, 'strerror', None) or e})")
    return problems


def describe() -> str:
    """The settings table shown by ``--help``."""
    return "\n".join(f"  {s.dotted:<19} {s.env:<29} {s.help}" for s in SCHEMA)
