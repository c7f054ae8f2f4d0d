"""The whole native topology for tests, demo and benchmarks: etcd, PostgreSQL, sidecars.

The same topology as ``docker-compose.yml``, run as local processes on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgcohort import protocol
from pgcohort.core.rules import AnyK, Member, Rule
from pgcohort.store import EtcdStore, Security
from tests.pg import PgCluster, PgNode
from tests.servers import EtcdCluster, free_ports

BIN = os.path.join(os.path.dirname(sys.executable), "pgcohort")


def http_get(url: str, timeout: float = 2.0, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:  # noqa: S310 (loopback)
            body = r.read()
            return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json" else body.decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@dataclass
class SidecarProcess:
    name: str
    port: int
    log_path: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    tls: ssl.SSLContext | None = None  # how to reach it when it serves HTTPS
    host: str = "127.0.0.1"  # the address it listens on (its config says so; this is where the test looks)
    launcher: list[str] = field(default_factory=list)  # prepended to the command (tests.netns.Host.argv([]))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.launcher, BIN, "sidecar"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(self.url + path, context=self.tls)

    def wait_http(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/health")
                return
            except OSError:
                if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sidecar {self.name} did not start; see {self.log_path}") from None
                time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    @property
    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


@dataclass
class Stack:
    """etcd (3 members) + a PostgreSQL primary with streaming standbys + one sidecar each."""

    cluster: str = "main"
    etcd_size: int = 3
    etcd: EtcdCluster | None = None  # given: shared with the caller, who closes it
    pg: PgCluster = field(default_factory=PgCluster)
    sidecars: dict[str, SidecarProcess] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    security: Security | None = None  # how the stack's own store reaches etcd
    sidecar_tls: ssl.SSLContext | None = None  # set when the sidecars serve HTTPS (extra_env)
    prepare_primary: Callable[[PgCluster, PgNode], None] | None = None  # before the standbys are copied
    dsn_for: Callable[[PgNode], str] | None = None  # the sidecars' DSN (default: the node's trust DSN)

    def start(self, standbys: int = 3, policy: int = 1, sidecars: bool = True, init: bool = True) -> Stack:
        self._own_etcd = self.etcd is None
        if self.etcd is None:
            self.etcd = EtcdCluster(self.etcd_size).start()
        primary = self.pg.init_primary("pg0")
        if self.prepare_primary is not None:
            self.prepare_primary(self.pg, primary)
        for i in range(1, standbys + 1):
            self.pg.add_standby(f"pg{i}", "pg0")
        if init:
            rule = Rule(AnyK(policy), tuple(self.member(n) for n in self.pg.nodes))
            with self.store() as store:
                protocol.init(store, rule, "pg0", actor="stack")
        if sidecars:
            for name in self.pg.nodes:
                self.start_sidecar(name)
        return self

    def member(self, name: str) -> Member:
        return Member(name, "127.0.0.1", self.pg.nodes[name].port, "zone-a" if name in ("pg0", "pg1") else "zone-b")

    @property
    def endpoints(self) -> list[str]:
        return self.etcd_cluster.endpoints

    @property
    def etcd_cluster(self) -> EtcdCluster:
        assert self.etcd is not None, "start() first"
        return self.etcd

    def store(self, **kw: Any) -> EtcdStore:
        kw.setdefault("timeout", 2.0)
        kw.setdefault("retry_for", 15.0)
        kw.setdefault("security", self.security)
        return EtcdStore(self.endpoints, self.cluster, **kw)

    def env_for(self, node: PgNode, port: int) -> dict[str, str]:
        member = self.member(node.name)
        return {
            **os.environ,
            "PGCOHORT_CLUSTER": self.cluster,
            "PGCOHORT_ETCD_ENDPOINTS": ",".join(self.endpoints),
            "PGCOHORT_ETCD_TIMEOUT": "1",
            "PGCOHORT_ETCD_RETRY_FOR": "3",
            "PGCOHORT_NODE_NAME": node.name,
            "PGCOHORT_NODE_ZONE": member.zone,
            "PGCOHORT_NODE_PORT": str(node.port),
            "PGCOHORT_POSTGRES_DSN": self.dsn_for(node) if self.dsn_for else node.dsn,
            "PGCOHORT_SIDECAR_LISTEN": f"127.0.0.1:{port}",
            "PGCOHORT_SIDECAR_INTERVAL": "0.5",
            "PGCOHORT_SIDECAR_TTL": "3",
            **self.extra_env,
        }

    def start_sidecar(self, name: str, **env: str) -> SidecarProcess:
        old = self.sidecars.get(name)
        (port,) = (old.port,) if old else free_ports(1)
        car = SidecarProcess(
            name,
            port,
            os.path.join(self.pg.root, f"sidecar-{name}.log"),
            {**self.env_for(self.pg.nodes[name], port), **env},
            tls=self.sidecar_tls,
        )
        car.start()
        self.sidecars[name] = car  # recorded first: close() kills it even if it never answers
        car.wait_http()
        return car

    def primary_setting(self) -> str:
        import psycopg

        with psycopg.connect(self.pg.nodes["pg0"].dsn, autocommit=True) as conn:
            row = conn.execute("SHOW synchronous_standby_names").fetchone()
            return str(row[0]) if row else ""

    def wait(self, what: str, check: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{c.log[-3000:]}" for n, c in self.sidecars.items())
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
            time.sleep(interval)

    def close(self) -> None:
        for car in self.sidecars.values():
            car.kill()
        self.pg.close()
        if self.etcd is not None and getattr(self, "_own_etcd", True):
            self.etcd.close()
