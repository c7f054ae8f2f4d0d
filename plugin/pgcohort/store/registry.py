"""The node registry: each sidecar's leased status record under ``nodes/<name>``, and the
gate's last decision per node under ``decisions/<name>``.

A record is status, not a decision, so it is written with a plain leased put (repeating
it is harmless), not a compare-and-swap. The lease makes a dead sidecar's record vanish
``ttl`` seconds after its last renewal; leases are not clocks (an etcd leader change
resets TTLs), so nothing decides on a record's presence alone.

Every registration of a process's stores (one store, or a family made with
``EtcdStore.for_cluster``) shares one lease per TTL (:class:`Leases`): a process serving a
thousand clusters renews one lease every ``ttl/3``, not a thousand. The records die with
the process, together, which is what each of them alone would have done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pgcohort.core import decision, node
from pgcohort.core.decision import GateDecision
from pgcohort.core.node import NodeRecord
from pgcohort.errors import StoreUnavailableError
from pgcohort.store.transport import Transport, b64, unb64


class Leases:
    """One lease per TTL for every registration of a store family: granted once, renewed once a
    third of its TTL went by (one keepalive for all of them), granted anew when it is gone."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._lock = threading.Lock()
        self._held: dict[int, tuple[int, float]] = {}  # ttl -> (lease, monotonic time of its grant or renewal)

    def lease(self, ttl: int, renew: Callable[[int], int], grant: Callable[[int], int]) -> int:
        with self._lock:
            now = time.monotonic()
            held = self._held.get(ttl)
            if held is not None and now - held[1] < ttl / 3:
                return held[0]
            lease = held[0] if held is not None and renew(held[0]) > 0 else grant(ttl)
            self._held[ttl] = (lease, now)
            return lease

    def replace(self, ttl: int, lost: int, grant: Callable[[int], int]) -> int:
        """``lost`` was not found by a put (revoked, or expired early): a new lease, unless another
        registration already replaced it."""
        with self._lock:
            held = self._held.get(ttl)
            if held is not None and held[0] != lost:
                return held[0]
            lease = grant(ttl)
            self._held[ttl] = (lease, time.monotonic())
            return lease


class NodeRegistry:
    def __init__(self, transport: Transport, root: str, leases: Leases | None = None) -> None:
        self.transport = transport
        self.prefix = root + "nodes/"
        self.decisions = root + "decisions/"
        self.leases = leases or Leases(transport)

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

    def publish(self, record: NodeRecord) -> None:
        """Write ``record`` on the family's lease for this TTL, which is renewed once a third of its TTL
        has passed (one request per publish otherwise: a change makes every sidecar publish at once), or
        granted anew if it expired."""
        registry = self.registry
        self.lease = registry.leases.lease(self.ttl, registry.keepalive, registry.grant)
        try:
            registry.put(self.name, node.encode(record), self.lease)
        except StoreUnavailableError as e:
            if "lease not found" not in str(e):
                raise
            self.lease = registry.leases.replace(self.ttl, self.lease, registry.grant)  # revoked or expired early
            registry.put(self.name, node.encode(record), self.lease)

    def withdraw(self) -> None:
        self.registry.delete(self.name)
        self.lease = None
