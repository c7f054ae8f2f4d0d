"""The Patroni adapter: :class:`PatroniNode` implements :class:`pgcohort.seams.Node` beside a Patroni agent.

The only module that speaks to Patroni's REST API. What changes from plain PostgreSQL
(docs/patroni.md; Patroni's internals in the research notes):

* **The setting goes through Patroni.** :meth:`PatroniNode.setting_lock` yields a writer
  that puts ``synchronous_standby_names`` into Patroni's dynamic configuration
  (``<namespace>/<scope>/config``, ``postgresql.parameters``) in one etcd transaction that
  compares our ruleset's ``mod_revision`` and the config key's ``mod_revision`` (see
  :mod:`pgcohort.store.patroni`). Those two compares are the lock: a writer holding an older
  ruleset, or racing ``patronictl edit-config``, writes nothing. Patroni's leader renders it
  into ``postgresql.conf`` and reloads; :meth:`wait_in_force`, the barrier and
  :meth:`acknowledged` then ask PostgreSQL directly, as the plain adapter does. Nothing is
  ever written with ``ALTER SYSTEM`` (it would shadow Patroni's value forever).
* **It refuses to own the setting beside Patroni's own sync mode** (``synchronous_mode``
  ``on``/``quorum``, or ``synchronous_mode_strict``): two owners of one setting lose writes.
* **A revoke fences the voter, and Patroni lifts the fence.** Patroni's leader lease and
  watchdog fence the old primary only while its agent works: an agent that hangs (SIGSTOP, a
  stalled VM) leaves PostgreSQL running and acknowledging writes through any standby that
  still streams from it. So :meth:`revoke` stops the voter's WAL receiver and archive restore
  (``ALTER SYSTEM SET primary_conninfo = ''`` and ``restore_command = ''``, nothing kept)
  and reads what it holds only once ``pg_stat_wal_receiver`` shows no receiver, or one
  streaming from the candidate (the leader-key holder, which Patroni points standbys at).
  Patroni removes recovery settings from ``postgresql.auto.conf`` whenever it rewrites its
  own (``_sanitize_auto_conf``), so the fence never outlives Patroni's next repoint of that
  member: to the new leader after a promotion, or wherever Patroni says after a veto, when
  the gate also lifts it itself (:meth:`release`, ``ALTER SYSTEM RESET``). A voter whose
  agent hangs stays fenced until the agent returns, which is what keeps a hung old primary
  from counting its acknowledgement.
* **Eligibility as tags.** :meth:`set_eligible` writes ``tags: {nofailover: true}`` to a
  drop-in file in Patroni's configuration directory for a node outside the committed
  cohort (and removes the file for a member, so the operator's own tags apply), then
  ``POST /reload``: a non-member never enters Patroni's leader race.
* **Promotion is Patroni's.** :meth:`promote` refuses: fail over with ``patronictl``; the
  gate runs as Patroni's ``pre_promote``.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pgcohort import protocol
from pgcohort.config import Config
from pgcohort.core.failover import Wording
from pgcohort.core.rules import Member, Rule, parse_policy
from pgcohort.core.steps import Desired
from pgcohort.errors import InvalidInputError, NotInitializedError, PatroniUnreachableError, RefusedError
from pgcohort.postgres import fence
from pgcohort.postgres.database import Database
from pgcohort.seams import Hook, Revision
from pgcohort.store import EtcdStore
from pgcohort.store.patroni import PatroniConfigKey

WORDING = Wording(
    choose="Patroni's next leader race can promote {name} once its agent runs (the gate allows it), or promote "
    "it now with `patronictl failover --candidate {name}`",
    other="let Patroni's leader race pick a member of every active cohort, or name one with "
    "`patronictl failover --candidate NAME`",
    force="record it with `pgcohort gate --candidate NAME --allow-data-loss` (a forced term, in the history), then "
    "`patronictl failover --candidate NAME --force`",
    demote="Patroni demotes a primary that lost its leader key within retry_timeout (a watchdog makes sure); the "
    "leader race runs again after that",
)
"""How a refusal's remedy reads in Patroni's log: Patroni promotes, so its commands do."""

TAGS_FILE = "zz-pgcohort-tags.yml"
NOFAILOVER = (
    "# Written by the pgcohort sidecar: this node is not in the committed cohort, so it must\n"
    "# not win Patroni's leader race. Removed again when the node becomes a member.\n"
    "tags:\n  nofailover: true\n"
)


@dataclass(frozen=True)
class PatroniMember:
    """One member as Patroni's ``GET /cluster`` lists it."""

    name: str
    role: str
    state: str
    host: str
    port: int
    zone: str
    lag: int | None


@dataclass(frozen=True)
class ApiTls:
    """How to reach Patroni's REST API over HTTPS: the CA that signed its certificate (``restapi.cafile`` /
    ``certfile``), and a client certificate when ``restapi.verify_client`` asks for one."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.cacert)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise InvalidInputError(
                f"cannot use patroni.cacert/cert/key ({e}); check that the files exist and are readable by this "
                "user, and that the key matches the certificate. Nothing was changed"
            ) from None
        return ctx


class PatroniAPI:
    """Patroni's REST API on one node (``restapi.connect_address``), over HTTP or HTTPS."""

    def __init__(self, url: str, *, auth: str | None = None, timeout: float = 3.0, tls: ApiTls | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        try:
            host = urllib.parse.urlsplit(url).hostname
        except ValueError:  # an unclosed IPv6 bracket
            host = None
        if not host or any(c.isspace() or ord(c) < 32 for c in url):
            raise InvalidInputError(
                f"invalid Patroni REST API URL {url!r}: write http://HOST:PORT; nothing was changed"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._context = tls.context() if tls is not None and self.url.startswith("https://") else None
        self._auth = "Basic " + base64.b64encode(auth.encode()).decode() if auth else None

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        try:
            req = urllib.request.Request(self.url + path, data=data, method=method)
            if data is not None:
                req.add_header("Content-Type", "application/json")
            if self._auth:
                req.add_header("Authorization", self._auth)
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 503 and method == "GET":  # health endpoints answer 503 with the same body
                raw = e.read()
            else:
                raise PatroniUnreachableError(
                    f"Patroni at {self.url} answered {method} {path} with HTTP {e.code}: "
                    f"{e.read()[:200].decode(errors='replace')}"
                ) from None
        except (OSError, ValueError) as e:
            raise PatroniUnreachableError(
                f"Patroni's REST API at {self.url} did not answer {method} {path}: {e}{_tls_hint(str(e))}"
            ) from None
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            return raw.decode(errors="replace")

    def patroni(self) -> dict[str, Any]:
        """``GET /patroni``: this node's state, role, name and tags."""
        got = self._call("GET", "/patroni")
        return got if isinstance(got, dict) else {}

    def cluster(self) -> tuple[list[PatroniMember], str | None, str]:
        """``GET /cluster``: the members, the leader's name, and the scope."""
        got = self._call("GET", "/cluster")
        if not isinstance(got, dict) or not isinstance(got.get("members"), list):
            raise InvalidInputError(f"{self.url}/cluster did not return Patroni's member list")
        members, leader = [], None
        for m in got["members"]:
            tags = m.get("tags") or {}
            lag = m.get("lag") if isinstance(m.get("lag"), int) else None
            members.append(
                PatroniMember(
                    str(m["name"]), str(m.get("role", "")), str(m.get("state", "")), str(m.get("host", "")),
                    int(m.get("port", 5432)), str(tags.get("zone", "default")), lag,
                )
            )  # fmt: skip
            if m.get("role") == "leader":
                leader = str(m["name"])
        return members, leader, str(got.get("scope") or (self.patroni().get("patroni") or {}).get("scope") or "")

    def reload(self) -> None:
        """``POST /reload``: Patroni rereads its local configuration (and the tags)."""
        self._call("POST", "/reload", {})


class PatroniNode(Database):
    """A PostgreSQL server managed by Patroni."""

    keeps_fence_values = False  # Patroni's primary_conninfo and restore_command live in its postgresql.conf

    def __init__(
        self,
        dsn: str,
        *,
        config_key: PatroniConfigKey | None = None,
        api: PatroniAPI | None = None,
        config_dir: str | None = None,
        connect_timeout: float = 3.0,
    ) -> None:
        super().__init__(dsn, connect_timeout=connect_timeout)
        self.config_key = config_key
        self.api = api
        self.config_dir = config_dir
        self._eligible: bool | None = None

    # --- the setting, through Patroni's configuration ------------------------------------

    @contextmanager
    def setting_lock(self) -> Iterator[_ConfigWriter]:  # type: ignore[override]
        """No lock is held: the writer's two compares (ruleset and config revisions) serialise writers."""
        yield _ConfigWriter(self)

    def _write(self, desired: Desired) -> None:
        if self.config_key is None:
            raise InvalidInputError("internal: this PatroniNode was built to survey, not to write the setting")
        self.setting.epoch += 1  # a barrier belongs to one apply, as with plain PostgreSQL
        self.config_key.write_setting(Revision(desired.revision), self.config_key.read(), desired.setting)

    # --- failover -----------------------------------------------------------------------

    def release(self) -> None:
        """Lift the fence (``ALTER SYSTEM RESET``): Patroni's own recovery settings apply again."""
        fence.unfence(self.session)

    def follow(self, primary: Member) -> None:
        """Nothing to do: Patroni repoints its standbys to the new leader itself."""

    def promote(self, *, timeout: int = 60, setting: Desired | None = None) -> None:
        raise RefusedError(PROMOTES)

    # --- eligibility ------------------------------------------------------------------

    def set_eligible(self, eligible: bool) -> bool:
        """Keep Patroni's ``nofailover`` tag in step with the cohort; True when Patroni was told.

        Until Patroni has acknowledged a reload the call is repeated (the sidecar calls it
        every round), so a Patroni that was down or starting is told as soon as it answers.
        """
        if self.config_dir is None or eligible == self._eligible:
            return False
        path = os.path.join(self.config_dir, TAGS_FILE)
        try:
            if eligible:
                if os.path.exists(path):
                    os.unlink(path)
            elif _read(path) != NOFAILOVER:
                _write_atomically(path, NOFAILOVER)
        except OSError as e:
            raise InvalidInputError(
                f"cannot write {path}: {e.strerror}; check patroni.config_dir (Patroni's configuration directory) "
                "and that the sidecar's OS user (Patroni's) may write there"
            ) from None
        if self.api is not None:
            self.api.reload()
        self._eligible = eligible
        return True


class _ConfigWriter:
    """What :meth:`PatroniNode.setting_lock` yields: writes through Patroni's config key."""

    def __init__(self, node: PatroniNode) -> None:
        self._node = node

    def write(self, desired: Desired) -> None:
        self._node._write(desired)


def _tls_hint(error: str) -> str:
    """Which setting fixes a failed TLS handshake with Patroni's REST API."""
    if "CERTIFICATE_VERIFY_FAILED" in error:
        return " (set patroni.cacert to the CA that signed Patroni's REST API certificate, restapi.certfile)"
    if "CERTIFICATE_REQUIRED" in error.upper() or "certificate required" in error:
        return " (Patroni asks for a client certificate, restapi.verify_client: set patroni.cert and patroni.key)"
    return ""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pgcohort-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def connector(options: str, *, timeout: float = 3.0) -> Callable[[Member], PatroniNode]:
    """Reach any member's PostgreSQL for the gate's survey (fence and read)."""
    return lambda m: PatroniNode(f"host={m.host.strip('[]')} port={m.port} {options}", connect_timeout=timeout)


# --- the registry entry -------------------------------------------------------------------

PROMOTES = (
    "on Patroni, Patroni promotes: use `patronictl failover` or `patronictl switchover`; pgcohort's gate runs as "
    "Patroni's pre_promote and vetoes an unsafe candidate. Nothing was changed"
)


def api(url: str, cfg: Config) -> PatroniAPI:
    """A REST API client with this configuration's credentials and TLS settings."""
    tls = ApiTls(cfg["patroni.cacert"], cfg["patroni.cert"], cfg["patroni.key"])
    return PatroniAPI(url, auth=cfg["patroni.api_auth"], tls=tls)


def config_key(cfg: Config, store: EtcdStore, scope: str | None = None) -> PatroniConfigKey:
    """Patroni's ``config`` key of this cluster (``patroni.scope``, else the cluster name)."""
    return store.patroni_config(scope or cfg["patroni.scope"] or cfg["cluster"], cfg["patroni.namespace"])


def members(url: str, cfg: Config) -> tuple[list[Member], list[str], str, str]:
    """From Patroni's ``GET /cluster``: the running members, the ones left out (and why), the leader, the scope."""
    listed, leader, scope = api(url, cfg).cluster()
    if leader is None:
        raise RefusedError(f"Patroni at {url} reports no leader; adopt the cluster once it has one")
    chosen, skipped = [], []
    for m in listed:
        if m.name == leader or m.state in ("streaming", "running"):
            chosen.append(Member(m.name, m.host, m.port, m.zone))
        else:
            skipped.append(f"{m.name} ({m.state})")
    return chosen, skipped, leader, scope


class Patroni:
    """The ``patroni`` entry of the adapter registry (see :class:`pgcohort.assembly.Adapter`)."""

    name = "patroni"
    wording = WORDING
    hook = Hook()  # pre_promote: its output is read whole, and a veto lets the leader race run again
    adoption = "pgcohort init --from-patroni URL"

    def node(self, cfg: Config, store: EtcdStore) -> PatroniNode:
        return PatroniNode(
            cfg["postgres.dsn"],
            config_key=config_key(cfg, store),
            api=api(cfg["patroni.url"], cfg) if cfg["patroni.url"] else None,
            config_dir=cfg["patroni.config_dir"],
        )

    def connector(self, cfg: Config) -> Callable[[Member], PatroniNode]:
        return connector(cfg["postgres.member_options"])

    def preflight(self, cfg: Config, store: EtcdStore) -> str | None:
        """Two owners of one setting lose writes: refuse to start beside Patroni's own sync mode."""
        try:
            return config_key(cfg, store).read().sync_mode_problem()
        except NotInitializedError:
            return None  # Patroni has not bootstrapped yet: every write checks again

    def managed_by(self, cfg: Config, store: EtcdStore) -> str | None:
        managed: str | None = config_key(cfg, store).read().managed_by
        return managed

    def promotes(self) -> str | None:
        return PROMOTES

    def adopt(self, source: str, cfg: Config, store: EtcdStore, *, policy: str, actor: str) -> list[str]:
        """``init --from-patroni URL``: the members and leader from Patroni, and the switch from its sync mode, in
        one transaction (no moment of asynchronous commits). Returns what to print."""
        chosen, skipped, leader, scope = members(source, cfg)
        if cfg["patroni.scope"] and scope and cfg["patroni.scope"] != scope:
            raise InvalidInputError(
                f"Patroni at {source} runs scope {scope!r} but patroni.scope is {cfg['patroni.scope']!r}; "
                "nothing was changed"
            )
        rule = Rule(parse_policy(policy), tuple(chosen))
        rs, term = protocol.first(rule, leader, actor=actor)
        key = config_key(cfg, store, scope)
        before = key.read()
        setting = rule.render(leader)
        rev = key.adopt(rs, term, before, setting)
        lines = [
            f"adopted Patroni scope {scope!r} into {store.root}: version 1 and term 1 (primary {leader}) at revision "
            f"{rev}",
            f"rule: {rule.show()}",
        ]
        if skipped:
            lines.append(
                f"left out (not streaming): {', '.join(skipped)}; add them with `pgcohort add` once they stream"
            )
        was = before.value.get("synchronous_mode", False)
        lines.append(
            f"in the same transaction {key.key}: synchronous_mode {was!r} -> false, "
            f"synchronous_standby_names {before.setting!r} -> {setting!r}"
        )
        return lines


ADAPTER = Patroni()
