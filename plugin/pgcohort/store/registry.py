"""The node registry: each sidecar's leased status record under ``nodes/<name>``, and the
gate's last decision per node under ``decisions/<name>``.

A record is status, not a decision, so it is written with a plain leased put (repeating
it is harmless), not a compare-and-swap. The lease makes a dead sidecar's record vanish
``ttl`` seconds after its last renewal; leases are not clocks (an etcd leader change
resets TTLs), so nothing decides on a record's presence alone.
"""

from __future__ import annotations

import time

from pgcohort.core import decision, node
from pgcohort.core.decision import GateDecision
from pgcohort.core.node import NodeRecord
from pgcohort.errors import StoreUnavailableError
from pgcohort.store.transport import Transport, b64, unb64


class NodeRegistry:
    def __init__(self, transport: Transport, root: str) -> None:
        self.transport = transport
        self.prefix = root + "nodes/"
        self.decisions = root + "decisions/"

    def key(self, name: str) -> str:
        return self.prefix + name

    def nodes(self) -> dict[str, NodeRecord]:
        kvs, _ = self.transport.range(self.prefix, prefix=True)
        out = {}
        for kv in kvs:
            name = unb64(kv["key"]).decode()[len(self.prefix) :]
            out[name] = node.decode(name, unb64(kv.get("value", "")))
        return out

    def registration(self, name: str, ttl: int) -> NodeRegistration:
        return NodeRegistration(self, name, ttl)

    def grant(self, ttl: int) -> int:
        return int(self.transport.request("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns the new TTL, or 0 if the lease no longer exists."""
        resp = self.transport.request("lease/keepalive", {"ID": lease})
        return int(resp.get("result", {}).get("TTL", 0))

    def put(self, name: str, value: bytes, lease: int) -> None:
        self.transport.request("kv/put", {"key": b64(self.key(name)), "value": b64(value), "lease": lease})

    def delete(self, name: str) -> None:
        self.transport.request("kv/deleterange", {"key": b64(self.key(name))})

    def record_decision(self, d: GateDecision) -> None:
        """Overwrite the gate's last decision for ``d.candidate`` (status: a plain put, no lease)."""
        self.transport.request("kv/put", {"key": b64(self.decisions + d.candidate), "value": b64(decision.encode(d))})

    def decision(self, name: str) -> GateDecision | None:
        kvs, _ = self.transport.range(self.decisions + name)
        return decision.decode(unb64(kvs[0].get("value", ""))) if kvs else None


class NodeRegistration:
    """One node's record. Call :meth:`publish` at least every ``ttl/3`` seconds."""

    def __init__(self, registry: NodeRegistry, name: str, ttl: int) -> None:
        self.registry, self.name, self.ttl = registry, name, ttl
        self.lease: int | None = None
        self._renewed = 0.0  # monotonic time of the last keepalive or grant

    def publish(self, record: NodeRecord) -> None:
        """Write ``record`` on the lease, renewing it once a third of its TTL has passed (one request
        per publish otherwise: a change makes every sidecar publish at once), or granting a new one
        if it expired."""
        now = time.monotonic()
        if self.lease is None or now - self._renewed >= self.ttl / 3:
            if self.lease is None or self.registry.keepalive(self.lease) <= 0:
                self.lease = self.registry.grant(self.ttl)
            self._renewed = now
        try:
            self.registry.put(self.name, node.encode(record), self.lease)
        except StoreUnavailableError as e:
            if "lease not found" not in str(e):
                raise
            self.lease, self._renewed = self.registry.grant(self.ttl), now  # revoked or expired early
            self.registry.put(self.name, node.encode(record), self.lease)

    def withdraw(self) -> None:
        self.registry.delete(self.name)
        self.lease = None
