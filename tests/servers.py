"""Real servers for the tests: etcd clusters on free loopback ports, with fault helpers."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class Certs:
    """Certificates made by the suite (trustme): a CA, etcd's and PostgreSQL's server certificate for
    127.0.0.1/localhost, a client certificate, and a second CA with a client certificate etcd does not trust."""

    dir: str

    @staticmethod
    def make(directory: str) -> Certs:
        import trustme

        os.makedirs(directory, exist_ok=True)
        ca, other = trustme.CA(), trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("pgcohort-client")
        stranger = other.issue_cert("stranger")
        ca.cert_pem.write_to_path(f"{directory}/ca.pem")
        other.cert_pem.write_to_path(f"{directory}/other-ca.pem")
        for name, leaf in (("server", server), ("client", client), ("stranger", stranger)):
            leaf.cert_chain_pems[0].write_to_path(f"{directory}/{name}.pem")
            leaf.private_key_pem.write_to_path(f"{directory}/{name}-key.pem")
            os.chmod(f"{directory}/{name}-key.pem", 0o600)
        return Certs(directory)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.path("ca.pem"))
        ctx.load_cert_chain(self.path("client.pem"), self.path("client-key.pem"))
        return ctx

    def secrets(self) -> list[str]:
        """Lines of the private keys: none may ever appear in output."""
        out = []
        for name in ("server", "client", "stranger"):
            with open(self.path(f"{name}-key.pem")) as f:
                out += [line for line in f.read().splitlines() if line and "-----" not in line]
        return out


def _get_json(url: str, timeout: float = 1.0, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as r:  # noqa: S310 (loopback only)
        body: dict[str, Any] = json.loads(r.read())
        return body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post_json(url: str, body: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback only)
        answer: dict[str, Any] = json.loads(r.read())
        return answer


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    scheme: str = "http"
    host: str = "127.0.0.1"  # the address its client URL listens on and advertises

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """A throw-away etcd cluster (Debian's etcd 3.4) on loopback; fast timers, no fsync."""

    size: int = 3
    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="pgcohort-etcd-"))
    members: list[EtcdMember] = field(default_factory=list)
    token: str = field(default_factory=lambda: "pgcohort-" + uuid.uuid4().hex[:8])
    certs: Certs | None = None  # client TLS with --client-cert-auth
    auth_token_ttl: int | None = None  # seconds a simple auth token lives unused
    extra_args: list[str] = field(default_factory=list)  # more etcd flags (benchmarks)
    # The client URLs' address: tests.netns.Network.etcd_address lets namespaced hosts reach it.
    # Peer URLs stay on loopback; with ``certs``, the server certificate names only 127.0.0.1.
    host: str = "127.0.0.1"

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        ports = free_ports(2 * self.size)
        for i in range(self.size):
            name = f"e{i}"
            self.members.append(
                EtcdMember(
                    name,
                    ports[2 * i],
                    ports[2 * i + 1],
                    os.path.join(self.root, name),
                    os.path.join(self.root, name + ".log"),
                    scheme="https" if self.certs else "http",
                    host=self.host,
                )
            )
        for m in self.members:
            self._spawn(m)
        self.wait_healthy(timeout)
        return self

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def _spawn(self, m: EtcdMember) -> None:
        args = [
            ETCD, "--name", m.name, "--data-dir", m.data_dir,
            "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new", "--unsafe-no-fsync",
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--logger", "zap", "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.certs is not None:
            c = self.certs
            args += ["--cert-file", c.path("server.pem"), "--key-file", c.path("server-key.pem"),
                     "--trusted-ca-file", c.path("ca.pem"), "--client-cert-auth"]  # fmt: skip
        if self.auth_token_ttl is not None:
            args += ["--auth-token-ttl", str(self.auth_token_ttl)]
        args += self.extra_args
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self, m: EtcdMember) -> bool:
        context = self.certs.client_context() if self.certs else None
        try:
            return _get_json(m.url + "/health", context=context).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 20.0, members: list[EtcdMember] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for m in members or [m for m in self.members if m.proc and m.proc.poll() is None]:
            while not self.healthy(m):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {m.name} not healthy after {timeout}s; see {m.log_path}")
                time.sleep(0.05)

    def ctl(self, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``etcdctl`` against this cluster (with its certificates; ``user`` as NAME:PASSWORD)."""
        cmd = ["etcdctl", "--endpoints", ",".join(self.endpoints)]
        if self.certs is not None:
            c = self.certs
            cmd += ["--cacert", c.path("ca.pem"), "--cert", c.path("client.pem"), "--key", c.path("client-key.pem")]
        if user is not None:
            cmd += ["--user", user]
        env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
        return subprocess.run(cmd + list(args), env=env, check=check, capture_output=True, text=True, timeout=30)

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        """The member that leads, waiting out an election (a member between leaders names none)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if m.proc is None or m.proc.poll() is not None:
                    continue
                try:
                    leader = _post_json(m.url + "/v3/maintenance/status", {}).get("leader")
                except OSError:
                    continue
                if not leader:
                    continue
                for c in self.members:
                    if c.proc is None or c.proc.poll() is not None:
                        continue
                    try:
                        if _post_json(c.url + "/v3/maintenance/status", {})["header"]["member_id"] == leader:
                            return c
                    except OSError:
                        continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader within {timeout:.0f}s")
            time.sleep(0.1)

    def kill(self, m: EtcdMember) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait()

    def stop(self, m: EtcdMember) -> None:
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGSTOP)

    def cont(self, m: EtcdMember) -> None:
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGCONT)

    def restart(self, m: EtcdMember, wait: bool = True) -> None:
        self.kill(m)
        self._spawn(m)  # the existing data dir makes --initial-cluster-state irrelevant
        if wait:
            self.wait_healthy(members=[m])

    def compact(self, revision: int) -> None:
        for m in self.members:
            try:
                _post_json(m.url + "/v3/kv/compaction", {"revision": revision, "physical": True})
                return
            except OSError:
                continue
        raise RuntimeError("no member accepted the compaction")

    def put_raw(self, key: str, value: bytes) -> int:
        """Write ``value`` under ``key`` behind pgcohort's back (planting records for tests)."""
        return self._raw("kv/put", {"key": _b64(key.encode()), "value": _b64(value)})

    def delete_raw(self, key: str) -> int:
        return self._raw("kv/deleterange", {"key": _b64(key.encode())})

    def get_raw(self, key: str) -> bytes | None:
        """The bytes under ``key`` (None if absent), read past pgcohort."""
        for m in self.members:
            try:
                kvs = _post_json(f"{m.url}/v3/kv/range", {"key": _b64(key.encode())}).get("kvs") or []
            except OSError:
                continue
            return base64.b64decode(kvs[0].get("value", "")) if kvs else None
        raise RuntimeError("no member answered kv/range")

    def _raw(self, path: str, body: dict[str, str]) -> int:
        for m in self.members:
            try:
                return int(_post_json(f"{m.url}/v3/{path}", body)["header"]["revision"])
            except OSError:
                continue
        raise RuntimeError(f"no member accepted {path}")

    def close(self) -> None:
        for m in self.members:
            if m.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGCONT)
                self.kill(m)
        shutil.rmtree(self.root, ignore_errors=True)
