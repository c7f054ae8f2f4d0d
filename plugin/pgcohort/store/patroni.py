"""Patroni's dynamic configuration key, written in one transaction with our ruleset's compare.

Patroni keeps its dynamic configuration as JSON at ``<namespace>/<scope>/config`` and
writes it with a compare on its ``mod_revision`` (``PATCH /config``). pgcohort writes
``postgresql.parameters.synchronous_standby_names`` there, so that Patroni itself renders
it into every node's ``postgresql.conf`` (it survives Patroni restarts and failovers, and
``patronictl show-config`` shows it). Each write is one etcd transaction that compares
**both** our ruleset's ``mod_revision`` (the revision the setting was rendered from) and
the config key's ``mod_revision`` (the configuration the change was computed against):
a writer with a stale ruleset, or racing ``patronictl edit-config``, writes nothing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from pgcohort.core.ruleset import Ruleset
from pgcohort.core.term import Term
from pgcohort.errors import ConflictError, InvalidInputError, NotInitializedError, RefusedError
from pgcohort.seams import Revision
from pgcohort.store.records import Records
from pgcohort.store.transport import Transport, branch_kvs, get, mod_equals, put, unb64, writer_of

SETTING = "synchronous_standby_names"
MARK = "pgcohort"  # a top-level key in Patroni's config naming the ruleset that manages it (Patroni ignores it)


@dataclass(frozen=True)
class DynamicConfig:
    """Patroni's dynamic configuration as read, with the revision a write must compare."""

    value: dict[str, Any]
    revision: Revision
    key: str

    @property
    def setting(self) -> str | None:
        """``postgresql.parameters.synchronous_standby_names``, or None when not set."""
        params = (self.value.get("postgresql") or {}).get("parameters") or {}
        got = params.get(SETTING)
        return None if got is None else str(got)

    def sync_mode_problem(self) -> str | None:
        """Why pgcohort must not own the setting beside this configuration, or None."""
        mode = self.value.get("synchronous_mode", False)
        mode_on = mode not in (False, None, "off", "false", "False", 0)
        strict = self.value.get("synchronous_mode_strict", False) in (True, "on", "true", "True", 1)
        if not mode_on and not strict:
            return None
        what = f"synchronous_mode is {mode!r}" + (" and synchronous_mode_strict is on" if strict else "")
        return (
            f"Patroni's {what} in {self.key}: Patroni then owns synchronous_standby_names and would "
            "overwrite pgcohort's setting (two owners of one setting lose writes). Nothing was written. "
            "Switch with `pgcohort init --from-patroni URL` (one transaction turns sync mode off and writes "
            "the rendered setting), or set synchronous_mode: off and synchronous_mode_strict: false with "
            "`patronictl edit-config` if pgcohort already manages this cluster"
        )

    @property
    def managed_by(self) -> str | None:
        """The pgcohort root (``<prefix>/<cluster>/``) that adopted this Patroni cluster, if any."""
        mark = self.value.get(MARK)
        return str(mark.get("root")) if isinstance(mark, dict) and mark.get("root") else None

    def with_setting(self, setting: str, root: str, *, sync_mode_off: bool = False) -> dict[str, Any]:
        value = copy.deepcopy(self.value)
        value[MARK] = {"root": root}
        pg = value["postgresql"] = value.get("postgresql") or {}
        params = pg.get("parameters") or {}
        params[SETTING] = setting
        pg["parameters"] = params
        if sync_mode_off:
            value["synchronous_mode"] = False
            value["synchronous_mode_strict"] = False
        return value


class PatroniConfigKey:
    """The ``config`` key of one Patroni scope, beside one pgcohort cluster's records."""

    def __init__(self, transport: Transport, records: Records, namespace: str, scope: str) -> None:
        if not scope or "/" in scope:
            raise InvalidInputError(f"invalid Patroni scope {scope!r}: it must be non-empty and contain no '/'")
        self.transport, self.records = transport, records
        self.key = f"/{namespace.strip('/')}/{scope}/config" if namespace.strip("/") else f"/{scope}/config"

    def read(self) -> DynamicConfig:
        kvs, _ = self.transport.range(self.key)
        if not kvs:
            raise NotInitializedError(
                f"no Patroni configuration at {self.key}: check patroni.scope and patroni.namespace (Patroni's "
                "`scope` and `namespace`), and that Patroni has bootstrapped this cluster"
            )
        return self._decode(kvs[0])

    def _decode(self, kv: dict[str, Any]) -> DynamicConfig:
        rev = Revision(int(kv["mod_revision"]))
        try:
            value = json.loads(unb64(kv.get("value", "")) or b"{}")
        except ValueError as e:
            raise InvalidInputError(f"{self.key} (revision {rev}) is not JSON ({e}); nothing was written") from None
        if not isinstance(value, dict):
            raise InvalidInputError(f"{self.key} (revision {rev}) is not a JSON object; nothing was written")
        pg = value.get("postgresql")
        if not isinstance(pg, dict | None) or not isinstance((pg or {}).get("parameters"), dict | None):
            raise InvalidInputError(
                f"{self.key} (revision {rev}): postgresql or postgresql.parameters is not an object, so it is not "
                "a Patroni configuration pgcohort can write to; nothing was written. Fix it with `patronictl "
                "edit-config`"
            )
        return DynamicConfig(value, rev, self.key)

    def write_setting(self, ruleset_revision: Revision, config: DynamicConfig, setting: str) -> Revision:
        """Put ``setting`` into Patroni's config if neither the ruleset nor the config moved."""
        problem = config.sync_mode_problem()
        if problem:
            raise RefusedError(problem)
        if config.setting == setting and config.managed_by == self.records.root:
            return config.revision
        body = json.dumps(config.with_setting(setting, self.records.root), separators=(",", ":")).encode()
        compare = [mod_equals(self.records.ruleset_key, ruleset_revision), mod_equals(self.key, config.revision)]
        ok, resp = self.transport.txn(compare, [put(self.key, body)], [get(self.records.ruleset_key), get(self.key)])
        if ok:
            return Revision(int(resp["header"]["revision"]))
        ruleset_now, config_now = branch_kvs(resp, 0), branch_kvs(resp, 1)
        if ruleset_now and int(ruleset_now[0]["mod_revision"]) == ruleset_revision and config_now:
            now = self._decode(config_now[0])
            if now.setting == setting:  # an earlier attempt of ours whose answer was lost
                return now.revision
        raise ConflictError(
            f"the ruleset (revision {ruleset_revision}) or Patroni's {self.key} (revision {config.revision}) "
            "changed before synchronous_standby_names could be written there; nothing was written. "
            "The sidecar re-reads both and retries"
        )

    def adopt(self, ruleset: Ruleset, term: Term, config: DynamicConfig, setting: str) -> Revision:
        """``init`` and the switch from Patroni's sync mode to ``setting``, in one transaction.

        Compares: none of our records yet, and Patroni's config unchanged since read.
        Writes: the ruleset, the term and its confirmation with their history, and Patroni's config with
        ``synchronous_mode`` and ``synchronous_mode_strict`` off and ``setting`` in place,
        so there is no moment in which commits are asynchronous.
        """
        r = self.records
        body = json.dumps(config.with_setting(setting, r.root, sync_mode_off=True), separators=(",", ":")).encode()
        compare, success = r.first(ruleset, term)
        compare.append(mod_equals(self.key, config.revision))
        success.append(put(self.key, body))
        ok, resp = self.transport.txn(compare, success, [get(r.ruleset_key), get(self.key)])
        if ok:
            return Revision(int(resp["header"]["revision"]))
        ruleset_now = branch_kvs(resp, 0)
        if ruleset_now and writer_of(ruleset_now[0]) == ruleset.writer:
            return Revision(int(ruleset_now[0]["mod_revision"]))  # an earlier attempt of ours committed
        if ruleset_now:
            raise RefusedError(
                f"refused adoption: cluster {r.root} is already initialized; nothing was changed. "
                "Use `pgcohort status` to see it"
            )
        raise ConflictError(
            f"Patroni's {self.key} changed (was revision {config.revision}) while adopting; nothing was "
            "written. Run the same command again"
        )
