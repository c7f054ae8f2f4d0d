"""Building the pieces from a configuration: the one place that picks concrete classes.

The sidecar and the gate are written against :mod:`pgcohort.seams`; this module decides
that the store is etcd (:class:`pgcohort.store.EtcdStore`) and the node is plain
PostgreSQL (:mod:`pgcohort.adapters.postgres`) or a Patroni member
(:mod:`pgcohort.adapters.patroni`), by ``sidecar.adapter``.
The adapter, the metrics and the sidecar are imported only by the functions that build
them, so that ``pgcohort status`` or ``add`` does not load psycopg or prometheus_client.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgcohort.config import Config, adapter
from pgcohort.core.failover import PLAIN, Wording
from pgcohort.core.rules import Member
from pgcohort.errors import NotInitializedError, RefusedError
from pgcohort.seams import Node
from pgcohort.store import EtcdStore, Security
from pgcohort.store.patroni import PatroniConfigKey

if TYPE_CHECKING:
    from pgcohort.adapters.patroni import PatroniAPI
    from pgcohort.sidecar import Sidecar


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


def connector(cfg: Config) -> Callable[[Member], Node]:
    """How the gate reaches any member (host and port from the ruleset, options from the config)."""
    if adapter(cfg) == "patroni":
        from pgcohort.adapters import patroni

        return patroni.connector(cfg["postgres.member_options"])
    from pgcohort.adapters import postgres

    return postgres.connector(cfg["postgres.member_options"])


def wording(cfg: Config) -> Wording:
    """How the gate's refusals tell the operator to promote someone else: in the HA manager's words."""
    if adapter(cfg) == "patroni":
        from pgcohort.adapters import patroni

        return patroni.WORDING
    return PLAIN


def patroni_managed_by(cfg: Config, etcd: EtcdStore) -> str | None:
    """Beside Patroni: the pgcohort root that Patroni's configuration says manages it (None: none, or not Patroni)."""
    if adapter(cfg) != "patroni":
        return None
    managed_by: str | None = patroni_key(cfg, etcd).read().managed_by
    return managed_by


def patroni_cluster(url: str, cfg: Config) -> tuple[list[Member], list[str], str, str]:
    """From Patroni's ``GET /cluster``: the running members, the ones left out (and why), the leader, the scope."""

    listed, leader, scope = patroni_api(url, cfg).cluster()
    if leader is None:
        raise RefusedError(f"Patroni at {url} reports no leader; adopt the cluster once it has one")
    members, skipped = [], []
    for m in listed:
        if m.name == leader or m.state in ("streaming", "running"):
            members.append(Member(m.name, m.host, m.port, m.zone))
        else:
            skipped.append(f"{m.name} ({m.state})")
    return members, skipped, leader, scope


def patroni_api(url: str, cfg: Config) -> PatroniAPI:
    """A Patroni REST API client with this configuration's credentials and TLS settings."""
    from pgcohort.adapters import patroni

    tls = patroni.ApiTls(cfg["patroni.cacert"], cfg["patroni.cert"], cfg["patroni.key"])
    return patroni.PatroniAPI(url, auth=cfg["patroni.api_auth"], tls=tls)


def patroni_key(cfg: Config, etcd: EtcdStore, scope: str | None = None) -> PatroniConfigKey:
    return etcd.patroni_config(scope or cfg["patroni.scope"] or cfg["cluster"], cfg["patroni.namespace"])


def node(cfg: Config, etcd: EtcdStore) -> Node:
    """This node's database, driven through the adapter the configuration names."""
    if adapter(cfg) == "patroni":
        from pgcohort.adapters import patroni

        return patroni.PatroniNode(
            cfg["postgres.dsn"],
            config_key=patroni_key(cfg, etcd),
            api=patroni_api(cfg["patroni.url"], cfg) if cfg["patroni.url"] else None,
            config_dir=cfg["patroni.config_dir"],
        )
    from pgcohort.adapters import postgres

    return postgres.PostgresNode(cfg["postgres.dsn"])


def sidecar(cfg: Config) -> Sidecar:
    from pgcohort.metrics import Metrics
    from pgcohort.sidecar import Settings, Sidecar

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
    if adapter(cfg) == "patroni":  # two owners of one setting lose writes: refuse before starting
        try:
            problem = patroni_key(cfg, etcd).read().sync_mode_problem()
        except NotInitializedError:
            problem = None  # Patroni has not bootstrapped yet: every write checks again
        if problem:
            raise RefusedError(f"the sidecar did not start: {problem}")
    return Sidecar(settings, etcd, node(cfg, etcd), metrics)
