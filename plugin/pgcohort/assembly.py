"""Building the pieces from a configuration: the one place that picks concrete classes.

The sidecar and the gate are written against :mod:`pgcohort.seams`; this module decides
that the store is etcd (:class:`pgcohort.store.EtcdStore`) and which HA manager's adapter
drives the node: the :class:`Adapter` registered under the name ``sidecar.adapter`` gives
(entry points, group ``pgcohort.adapters``: ``postgres``, ``patroni``, ``repmgr``). Adapters,
metrics and the sidecar are loaded only by the functions that build them, so that
``pgcohort status`` or ``add`` does not load psycopg or prometheus_client.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from pgcohort.config import Config
from pgcohort.config import adapter as adapter_name
from pgcohort.core.failover import Wording
from pgcohort.core.rules import Member
from pgcohort.errors import InvalidInputError, RefusedError
from pgcohort.seams import Hook, Node
from pgcohort.store import EtcdStore, Security

if TYPE_CHECKING:
    from pgcohort.sidecar.loop import Sidecar


def actor() -> str:
    """Who is acting, for ``changed_by`` and writer ids: PGCOHORT_ACTOR, else USER@host."""
    return os.environ.get("PGCOHORT_ACTOR") or f"{os.environ.get('USER', 'cli')}@{socket.gethostname()}"


def store(cfg: Config, **kw: Any) -> EtcdStore:
    return EtcdStore(
        cfg["etcd.endpoints"],
        cfg["cluster"],
        prefix=cfg["etcd.prefix"],
        timeout=cfg["etcd.timeout"],
        retry_for=cfg["etcd.retry_for"],
        security=Security(
            user=cfg["etcd.user"],
            password=cfg["etcd.password"],
            password_file=cfg["etcd.password_file"],
            cacert=cfg["etcd.cacert"],
            cert=cfg["etcd.cert"],
            key=cfg["etcd.key"],
        ),
        **kw,
    )


class Adapter(Protocol):
    """One HA manager beside PostgreSQL: everything pgcohort does differently there.

    Each is an entry point of group ``pgcohort.adapters`` (pyproject.toml), named as
    ``sidecar.adapter`` names it; :func:`adapter` finds it, so nothing in the plugin imports an
    adapter by name, and the sidecar and the gate only ever see the :class:`Node` it builds.
    """

    name: str
    wording: Wording  # how refusals' remedies tell the operator to promote someone else
    hook: Hook  # how the HA manager runs `pgcohort gate` before promoting (Patroni's pre_promote: the defaults)
    adoption: str  # the command that puts an existing cluster under pgcohort, for messages

    def node(self, cfg: Config, store: EtcdStore) -> Node:
        """This node's database, driven through the HA manager (the sidecar's)."""
        ...

    def connector(self, cfg: Config) -> Callable[[Member], Node]:
        """Any member, by the host and port the ruleset records, with ``postgres.member_options`` (the gate's)."""
        ...

    def preflight(self, cfg: Config, store: EtcdStore) -> str | None:
        """Why the sidecar must not start beside the HA manager's own settings, or None."""
        ...

    def managed_by(self, cfg: Config, store: EtcdStore) -> str | None:
        """The pgcohort root the HA manager's configuration says manages this cluster (left by an adoption)."""
        ...

    def promotes(self) -> str | None:
        """None if ``pgcohort failover`` promotes here; else why it does not and what does."""
        ...

    def adopt(self, source: str, cfg: Config, store: EtcdStore, *, policy: str, actor: str) -> list[str]:
        """``init --from-<name> SOURCE``: create the ruleset from what the HA manager knows; the lines to print."""
        ...


def adapter(cfg: Config) -> Adapter:
    """The registered adapter ``sidecar.adapter`` names (``auto``: patroni when ``patroni.url`` is set)."""
    return registered(adapter_name(cfg))


def registered(name: str) -> Adapter:
    """The adapter registered as ``name`` (entry points of group ``pgcohort.adapters``)."""
    found = {e.name: e for e in entry_points(group="pgcohort.adapters")}
    if name not in found:
        raise InvalidInputError(
            f"no adapter {name!r} is installed (installed: {', '.join(sorted(found)) or 'none'}): set "
            "sidecar.adapter to one of them, or install pgcohort again (`pip install .`)"
        )
    loaded: Adapter = found[name].load()
    return loaded


def connector(cfg: Config) -> Callable[[Member], Node]:
    """How the gate reaches any member (host and port from the ruleset, options from the config)."""
    return adapter(cfg).connector(cfg)


def sidecar(cfg: Config) -> Sidecar:
    from pgcohort.metrics import Metrics
    from pgcohort.sidecar.loop import Sidecar
    from pgcohort.sidecar.state import Settings

    metrics = Metrics(cfg["node.name"])
    settings = Settings(
        name=cfg["node.name"],
        zone=cfg["node.zone"],
        host=cfg["node.host"],
        port=cfg["node.port"],
        interval=cfg["sidecar.interval"],
        ttl=cfg["sidecar.ttl"],
        barrier_timeout=cfg["sidecar.barrier_timeout"],
        auto_admit=cfg["sidecar.auto_admit"],
        admit_max_lag=cfg["sidecar.admit_max_lag"],
        admit_stable_for=cfg["sidecar.admit_stable_for"],
        leave_timeout=cfg["sidecar.leave_timeout"],
        heal_after=cfg["sidecar.heal_after"],
    )
    etcd = store(cfg, observe=metrics.observe_etcd)
    metrics.watch_store(etcd.stats)
    chosen = adapter(cfg)
    problem = chosen.preflight(cfg, etcd)  # e.g. Patroni's own sync mode: two owners of one setting lose writes
    if problem:
        raise RefusedError(f"the sidecar did not start: {problem}")
    return Sidecar(settings, etcd, chosen.node(cfg, etcd), metrics)
