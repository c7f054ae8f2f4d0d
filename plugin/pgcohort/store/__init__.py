"""The etcd store of one cluster: :class:`EtcdStore` implements :class:`pgcohort.seams.Store`.

Four units, as Patroni splits its etcd3 client from its DCS class:

* :mod:`.transport` — requests, endpoint rotation, timeouts, auth, retries; the only importer of etcd3gw;
* :mod:`.records`   — the ruleset and term: linearizable reads, CAS writes with their history;
* :mod:`.registry`  — the nodes' leased status records;
* :mod:`.watch`     — the ruleset watch loop;
* :mod:`.hub`       — one prefix watch for every cluster a process serves, dispatched per cluster;
* :mod:`.patroni`   — Patroni's ``config`` key, written in one transaction with our ruleset's compare.

Keys live under ``<prefix>/<cluster>/`` (never under Patroni's ``/service/``):
``ruleset``, ``term``, ``confirmed``, ``history/<version>``, ``history/term-<n>``,
``history/confirmed-<n>``, ``nodes/<name>``, ``decisions/<name>``.
Beside Patroni, one more key is read and written: Patroni's ``<namespace>/<scope>/config``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from pgcohort.core.decision import GateDecision
from pgcohort.core.node import NodeRecord
from pgcohort.core.ruleset import Ruleset
from pgcohort.core.term import Confirmation, Term
from pgcohort.errors import InvalidInputError
from pgcohort.seams import Revision, Snapshot, StoreStats, TermSnapshot, View
from pgcohort.store import repair
from pgcohort.store.hub import HubWatch, WatchHub
from pgcohort.store.patroni import PatroniConfigKey
from pgcohort.store.records import Records
from pgcohort.store.registry import Leases, NodeRegistration, NodeRegistry
from pgcohort.store.transport import Security, Transport
from pgcohort.store.watch import LeaderHint, RulesetWatch

__all__ = ["EtcdStore", "Revision", "Security", "Snapshot", "TermSnapshot", "View", "StoreStats"]


class _Family:
    """What a store and the stores made from it with ``for_cluster`` share: the connections and
    credentials (the transport), one lease per TTL, which endpoint leads (where watches stream
    from), and, once it serves several clusters, one watch stream (the hub)."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self.transport = transport
        self.root = prefix.rstrip("/") + "/"
        self.leases = Leases(transport)
        self.leader = LeaderHint(transport)
        self.shared = False  # for_cluster was called: watches subscribe to the hub
        self._hub: WatchHub | None = None
        self._lock = threading.Lock()

    def hub(self) -> WatchHub:
        with self._lock:
            if self._hub is None:
                self._hub = WatchHub(self.transport, self.root, self.leader)
            return self._hub

    def close(self) -> None:
        self.transport.close()
        if self._hub is not None:
            self._hub.session.close()


class EtcdStore:
    """The pgcohort keys of one cluster in etcd."""

    def __init__(
        self,
        endpoints: Sequence[str],
        cluster: str,
        *,
        prefix: str = "/pgcohort",
        timeout: float = 3.0,
        retry_for: float = 10.0,
        security: Security | None = None,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        if not cluster or "/" in cluster:
            raise InvalidInputError(f"invalid cluster name {cluster!r}: it must be non-empty and contain no '/'")
        if prefix.startswith("/service/") or prefix == "/service":
            raise InvalidInputError("the pgcohort prefix must not be under Patroni's /service/")
        self.prefix = prefix
        transport = Transport(endpoints, timeout=timeout, retry_for=retry_for, security=security, observe=observe)
        self._attach(cluster, _Family(transport, prefix))

    def _attach(self, cluster: str, family: _Family) -> None:
        self.root = f"{self.prefix.rstrip('/')}/{cluster}/"
        self._family = family
        self.transport = family.transport
        self.records = Records(self.transport, self.root)
        self.registry = NodeRegistry(self.transport, self.root, family.leases)

    def for_cluster(self, cluster: str) -> EtcdStore:
        """The store of another cluster under the same prefix, for a process that serves several clusters
        (sidecars of several clusters on one host, a fleet exporter, bench/fleet.py). It shares this store's
        connections and credentials and one lease per TTL; from now on the watches of this store and of every
        store made from it share one watch stream on the prefix (:mod:`pgcohort.store.hub`)."""
        if not cluster or "/" in cluster:
            raise InvalidInputError(f"invalid cluster name {cluster!r}: it must be non-empty and contain no '/'")
        other = object.__new__(EtcdStore)
        other.prefix = self.prefix
        other._attach(cluster, self._family)
        self._family.shared = True
        return other

    def close(self) -> None:
        self._family.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the ruleset and the term (pgcohort.store.records) ---------------------------------

    def read(self) -> Snapshot:
        return self.records.read()

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        return self.records.read_both()

    def init(self, ruleset: Ruleset, term: Term) -> Revision:
        return self.records.init(ruleset, term)

    def commit(self, expected: Revision, ruleset: Ruleset, *, term_revision: Revision | None = None) -> Revision:
        return self.records.commit(expected, ruleset, term_revision=term_revision)

    def put_term(self, ruleset_revision: Revision, based_on: TermSnapshot, term: Term) -> Revision:
        return self.records.put_term(ruleset_revision, based_on, term)

    def confirm(self, based_on: TermSnapshot, confirmation: Confirmation) -> Revision:
        return self.records.confirm(based_on, confirmation)

    def history(self) -> list[tuple[Revision, Ruleset]]:
        return self.records.history()

    def term_history(self) -> list[tuple[Revision, Term]]:
        return self.records.term_history()

    def confirmation_history(self) -> list[tuple[Revision, Confirmation]]:
        return self.records.confirmation_history()

    def restore(self, *, actor: str, writer: str, now: str) -> list[str]:
        """``pgcohort restore``: commit the newest valid history entry again where a record is invalid."""
        return repair.restore(self.records, actor=actor, writer=writer, now=now)

    # --- node records (pgcohort.store.registry) --------------------------------------------

    def nodes(self) -> dict[str, NodeRecord]:
        return self.registry.nodes()

    def registration(self, name: str, ttl: int = 10) -> NodeRegistration:
        return self.registry.registration(name, ttl)

    def record_decision(self, d: GateDecision) -> None:
        self.registry.record_decision(d)

    def decision(self, name: str) -> GateDecision | None:
        return self.registry.decision(name)

    # --- watching (pgcohort.store.watch) ---------------------------------------------------

    def watch(self, since: Revision | None = None, *, silence: float = 10.0) -> RulesetWatch | HubWatch:
        """Every committed ruleset from now (or after ``since``). A store of a family that serves several
        clusters subscribes to the family's hub; a watch that must replay from ``since`` has a stream of its
        own, as does the store of a process that serves one cluster (a sidecar)."""
        if since is None and self._family.shared:
            return self._family.hub().subscribe(self.records, silence)
        return RulesetWatch(self.transport, self.records, since, silence, self._family.leader)

    def stats(self) -> StoreStats:
        return self.transport.stats()

    # --- Patroni's dynamic configuration (pgcohort.store.patroni) ----------------------------

    def patroni_config(self, scope: str, namespace: str = "/service") -> PatroniConfigKey:
        return PatroniConfigKey(self.transport, self.records, namespace, scope)
