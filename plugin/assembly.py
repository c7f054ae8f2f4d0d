"""Building the pieces from a configuration: the one place that picks concrete classes.

The sidecar and the gate are written against :mod:`pgcohort.seams`; this module decides
that the store is etcd (:class:`pgcohort.store.EtcdStore`) and the node is plain
PostgreSQL (:mod:`pgcohort.adapters.postgres`). A second adapter is chosen here too.
The adapter, the metrics and the sidecar are imported only by the functions that build
them, so that ``pgcohort status`` or ``add`` does not load psycopg or prometheus_client.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgcohort.config import Config
from pgcohort.core.rules import Member
from pgcohort.seams import Node
from pgcohort.store import EtcdStore

if TYPE_CHECKING:
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
        user=cfg["etcd.user"],
        password=cfg["etcd.password"],
        **kw,
    )


def connector(cfg: Config) -> Callable[[Member], Node]:
    """How the gate reaches any member (host and port from the ruleset, options from the config)."""
    from pgcohort.adapters import postgres

    return postgres.connector(cfg["postgres.member_options"])


def sidecar(cfg: Config) -> Sidecar:
    from pgcohort.adapters import postgres
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
    )
    etcd = store(cfg, observe=metrics.observe_etcd)
    metrics.watch_store(etcd.stats)
    return Sidecar(settings, etcd, postgres.PostgresNode(cfg["postgres.dsn"]), metrics)
