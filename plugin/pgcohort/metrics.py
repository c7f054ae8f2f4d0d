"""Prometheus metrics of one sidecar: the only module that imports prometheus_client.

Every metric is prefixed ``pgcohort_``; ``dashboards/`` has a Grafana dashboard and alert
rules built on these names, and ``tests/test_metrics_live.py`` checks that a real sidecar
sets every series they use. A gauge appears only once it was set: a value nobody measured
is absent (``absent()`` in PromQL), never a misleading 0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from pgcohort.core.decision import RESULTS, GateDecision
from pgcohort.core.ruleset import Ruleset
from pgcohort.seams import StoreStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StoreCollector(Collector):
    """Reads the store's own counters at scrape time (the store imports no metrics library)."""

    def __init__(self, stats: Callable[[], StoreStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        s = self.stats()
        yield CounterMetricFamily("pgcohort_etcd_errors", "etcd requests that failed", value=s.errors)
        yield CounterMetricFamily(
            "pgcohort_etcd_endpoint_rotations", "moves to the next etcd endpoint", value=s.rotations
        )
        yield CounterMetricFamily(
            "pgcohort_watch_resyncs", "watch streams restarted from a linearizable read", value=s.watch_resyncs
        )


class _SetGauge:
    """An unlabelled gauge registered on its first :meth:`set`, so an unset series is absent."""

    def __init__(self, registry: CollectorRegistry, name: str, documentation: str) -> None:
        self._gauge = Gauge(name, documentation, registry=None)
        self._registry = registry
        self._lock = threading.Lock()
        self._registered = False

    def set(self, value: float) -> None:
        with self._lock:
            if not self._registered:
                self._registry.register(self._gauge)
                self._registered = True
        self._gauge.set(value)


class Metrics:
    def __init__(self, member: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.member = member
        self.revision = _SetGauge(r, "pgcohort_ruleset_revision", "etcd revision of the committed ruleset")
        self.version = _SetGauge(r, "pgcohort_ruleset_version", "version of the committed ruleset")
        self.joint = _SetGauge(r, "pgcohort_ruleset_joint", "1 while a change is in its joint phase")
        self.joint_seconds = _SetGauge(r, "pgcohort_joint_phase_seconds", "seconds the current joint phase has lasted")
        self.cohort_size = _SetGauge(r, "pgcohort_cohort_size", "members in the committed rule's cohort")
        self.required_acks = _SetGauge(r, "pgcohort_required_acks", "standby acks that make a write durable (K)")
        self.seen = _SetGauge(r, "pgcohort_seen_revision", "latest ruleset revision this sidecar's watch delivered")
        self.applied = _SetGauge(
            r, "pgcohort_applied_revision", "ruleset revision whose setting this sidecar verified in force (primary)"
        )
        self.fenced = _SetGauge(r, "pgcohort_fenced", "1 if this node's PostgreSQL is a primary the term does not name")
        self.healthy = _SetGauge(r, "pgcohort_healthy", "1 if /health answers 200")
        self.is_primary = _SetGauge(r, "pgcohort_primary", "1 if this node's PostgreSQL is a primary")
        self.changes = Counter(
            "pgcohort_changes", "ruleset changes this sidecar attempted, by result", ["result"], registry=r
        )
        for result in ("proposed", "conflicted", "refused", "finalized"):
            self.changes.labels(result)
        self.gate_decisions = Counter(
            "pgcohort_gate_decisions",
            "the gate's decisions on this node (Patroni's pre_promote, or `pgcohort gate`), by result",
            ["result"],
            registry=r,
        )
        for result in RESULTS:
            self.gate_decisions.labels(result)
        self.gate_seconds = _SetGauge(r, "pgcohort_gate_decision_seconds", "how long the gate's last decision took")
        self.term = _SetGauge(r, "pgcohort_term", "the current failover term")
        self.term_primary = Gauge(
            "pgcohort_term_primary", "1 for the member the current term names as the primary", ["primary"], registry=r
        )
        self.invalid_record = Gauge(
            "pgcohort_invalid_record",
            "1 while a record read from etcd is refused as invalid (nothing acts on it); for node: how many",
            ["record"],
            registry=r,
        )
        for record in ("ruleset", "term", "node"):
            self.invalid_record.labels(record).set(0)
        self.lag = Gauge("pgcohort_node_lag_bytes", "standby flush lag seen by the primary", ["member"], registry=r)
        self.change_step = Histogram(
            "pgcohort_change_step_seconds",
            "seconds each step of applying a change took: watch (commit to delivery), lock, read, write, in_force,"
            " barrier, proof, finalize",
            ["step"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.etcd_seconds = Histogram(
            "pgcohort_etcd_request_seconds",
            "etcd request latency by API path",
            ["path"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def watch_store(self, stats: Callable[[], StoreStats]) -> None:
        self.registry.register(_StoreCollector(stats))

    def observe_etcd(self, path: str, seconds: float, ok: bool) -> None:
        self.etcd_seconds.labels(path).observe(seconds)

    def ruleset(self, rs: Ruleset, revision: int, joint_seconds: float) -> None:
        self.revision.set(revision)
        self.version.set(rs.version)
        self.joint.set(1 if rs.phase == "joint" else 0)
        self.joint_seconds.set(joint_seconds if rs.phase == "joint" else 0)
        self.cohort_size.set(len(rs.rule.cohort))
        self.required_acks.set(rs.rule.acks())

    def terms(self, term: int, primary: str) -> None:
        self.term.set(term)
        self.term_primary.clear()
        self.term_primary.labels(primary).set(1)

    def gate(self, d: GateDecision) -> None:
        self.gate_decisions.labels(d.result).inc()
        self.gate_seconds.set(d.seconds)

    def refused_record(self, record: str | None) -> None:
        """The ruleset or term was refused as invalid (``record`` names which), or None: both read fine."""
        for kind in ("ruleset", "term"):
            self.invalid_record.labels(kind).set(1 if kind == record else 0)

    def lags(self, lags: dict[str, int | None]) -> None:
        self.lag.clear()
        for name, value in lags.items():
            if value is not None:
                self.lag.labels(name).set(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
