"""What every benchmark shares: percentiles, formatting, and the bare etcd CAS baseline."""

from __future__ import annotations

import base64
import os
import time

from etcd3gw.client import Etcd3Client


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


class BareCas:
    """A bare etcd3gw compare-and-swap transaction (compare mod_revision, put 200 bytes) on
    its own key, sent to one member: the baseline every benchmark prints beside itself."""

    def __init__(self, port: int, key: str = "/bench/bare") -> None:
        self.client = Etcd3Client(host="127.0.0.1", port=port, api_path="/v3/", timeout=3)
        self.client.session.trust_env = False
        self.key = base64.b64encode(key.encode()).decode()
        self.revision = 0
        self.samples: list[float] = []

    def once(self) -> float:
        value = base64.b64encode(os.urandom(150)).decode()
        txn = {
            "compare": [{"key": self.key, "target": "MOD", "result": "EQUAL", "mod_revision": self.revision}],
            "success": [{"request_put": {"key": self.key, "value": value}}],
            "failure": [{"request_range": {"key": self.key}}],
        }
        t0 = time.monotonic()
        resp = self.client.transaction(txn)
        elapsed = time.monotonic() - t0
        assert resp.get("succeeded"), resp
        self.revision = int(resp["header"]["revision"])
        self.samples.append(elapsed)
        return elapsed
