"""A real Patroni 4.x cluster on loopback for tests, the demo and the benchmark.

Each node is a Patroni agent (run as ``postgres``, from the world-readable venv made with
``/usr/bin/python3``) with its own PostgreSQL 15, REST port and configuration *directory*
(``conf.d/``): ``00-patroni.yml`` is Patroni's own file, and the pgcohort sidecar keeps
``zz-pgcohort-tags.yml`` beside it. Each node also gets ``pgcohort.yml``, the one file the
sidecar and the gate read: Patroni runs the gate as ``pre_promote`` with no arguments and
almost no environment, so everything the gate needs is in that file.

The agents import pgcohort from a world-readable copy of this checkout (``PYTHONPATH``),
or from ``PYTHONPATH`` as given (the mutation runner's scratch copy), never from a
checkout the ``postgres`` user may not be able to read.

Given a ``tests.netns.Network``, each node runs in a network namespace of its own (its
agent, PostgreSQL, sidecar and the gate Patroni spawns) with its own address on the
network's bridge, so the network can partition some nodes from others; etcd must then
listen on ``Network.etcd_address``, and the test process reaches every node over the bridge.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import yaml

from tests.mutations.run import package_copy
from tests.netns import Host, Network
from tests.pg import PG_BIN, _pg_ids, kill_postmaster
from tests.servers import Certs, EtcdCluster, free_ports
from tests.stack import SidecarProcess, http_get

VENV = os.environ.get("PGCOHORT_VENV", "/opt/pgcohort/venv")
PATRONI = f"{VENV}/bin/patroni"
PATRONICTL = f"{VENV}/bin/patronictl"
PGCOHORT = f"{VENV}/bin/pgcohort"
ROOT = pathlib.Path(__file__).resolve().parent.parent

# The demo's topology (scripts/demo.py); docker-compose.yml describes the same (tests/test_compose.py).
DEMO_SCOPE = "demo"
DEMO_NODES = (("pg0", "zone-a"), ("pg1", "zone-a"), ("pg2", "zone-b"))
DEMO_POLICY = "any 1"
TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 2, 5  # loop_wait + 2 * retry_timeout <= ttl


@dataclass
class Agent:
    """One Patroni node: its agent, its PostgreSQL, its sidecar."""

    name: str
    zone: str
    pg_port: int
    rest_port: int
    sidecar_port: int
    home: str
    proc: subprocess.Popen[bytes] | None = None
    sidecar: SidecarProcess | None = None
    host: Host | None = None  # its network namespace, if the cluster has a network
    tls: str | None = None  # a directory of certificates (tests.servers.Certs, readable by postgres): REST over HTTPS

    @property
    def address(self) -> str:
        """Where its PostgreSQL, REST API and sidecar listen: its namespace's address, or loopback."""
        return self.host.address if self.host is not None else "127.0.0.1"

    @property
    def conf_dir(self) -> str:
        return os.path.join(self.home, "conf.d")

    @property
    def pgcohort_config(self) -> str:
        return os.path.join(self.home, "pgcohort.yml")

    @property
    def data_dir(self) -> str:
        return os.path.join(self.home, "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self.home, "patroni.log")

    @property
    def dsn(self) -> str:
        return f"host={self.address} port={self.pg_port} user=postgres dbname=postgres connect_timeout=3"

    @property
    def api(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.rest_port}"

    def tls_file(self, name: str) -> str:
        assert self.tls is not None
        return os.path.join(self.tls, name)

    @property
    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                pid = int(f.readline().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls_file("ca.pem"))
            context.load_cert_chain(self.tls_file("client.pem"), self.tls_file("client-key.pem"))
        return http_get(self.api + path, timeout, context)


@dataclass
class PatroniCluster:
    """Patroni agents on one etcd, each with a pgcohort sidecar and (optionally) the gate as ``pre_promote``."""

    etcd: EtcdCluster
    scope: str
    gate: bool = True
    ttl: int = TTL
    loop_wait: int = LOOP_WAIT
    retry_timeout: int = RETRY_TIMEOUT
    synchronous_mode: str = "off"
    dcs_parameters: dict[str, Any] = field(default_factory=dict)
    actor: str = "test"  # who the pgcohort commands say decided (PGCOHORT_ACTOR)
    agents: dict[str, Agent] = field(default_factory=dict)
    network: Network | None = None  # given: each node gets a Host of its own on it (the caller closes it)
    sidecar_settings: dict[str, Any] = field(default_factory=dict)  # merged into each pgcohort.yml's sidecar
    pgcohort_etcd: list[str] | None = None  # where pgcohort (sidecars, gate) reaches etcd, if not where Patroni does
    rest_tls: Certs | None = None  # Patroni's REST API over HTTPS, client certificates required

    def __post_init__(self) -> None:
        if self.network is not None and self.etcd.host != self.network.etcd_address:
            raise ValueError(
                f"etcd listens on {self.etcd.host}, which the namespaces cannot reach: "
                "start it with EtcdCluster(host=network.etcd_address)"
            )
        self.root = tempfile.mkdtemp(prefix="pgcohort-patroni-")
        os.chmod(self.root, 0o755)
        self.pythonpath = os.environ.get("PYTHONPATH") or self._readable_copy()

    def _tls_dir(self) -> str | None:
        """The REST certificates, copied where the postgres user (Patroni, the sidecar) can read them."""
        if self.rest_tls is None:
            return None
        where = os.path.join(self.root, "tls")
        if not os.path.isdir(where):
            shutil.copytree(self.rest_tls.dir, where)
            uid, gid = _pg_ids()
            for f in [where, *(os.path.join(where, n) for n in os.listdir(where))]:
                os.chown(f, uid, gid)
        return where

    def _readable_copy(self) -> str:
        site = os.path.join(self.root, "site")
        package_copy(pathlib.Path(site))
        subprocess.run(["chmod", "-R", "a+rX", site], check=True)
        return site

    # --- nodes ------------------------------------------------------------------------

    def add(self, name: str, zone: str = "zone-a", *, start: bool = True, sidecar: bool = True) -> Agent:
        pg_port, rest_port, sidecar_port = free_ports(3)
        home = os.path.join(self.root, name)
        host = self.network.host(name) if self.network is not None else None
        agent = Agent(name, zone, pg_port, rest_port, sidecar_port, home, host=host, tls=self._tls_dir())
        uid, gid = _pg_ids()
        os.makedirs(agent.conf_dir)
        for d in (home, agent.conf_dir):
            os.chown(d, uid, gid)
            os.chmod(d, 0o755)
        self._write(os.path.join(agent.conf_dir, "00-patroni.yml"), self.patroni_config(agent))
        self._write(agent.pgcohort_config, self.pgcohort_config(agent))
        self.agents[name] = agent
        if start:
            self.start_agent(agent)
        if sidecar:
            self.start_sidecar(agent)
        return agent

    def _write(self, path: str, doc: dict[str, Any]) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        os.chmod(path, 0o644)

    def patroni_config(self, a: Agent) -> dict[str, Any]:
        return patroni_config(
            self.scope,
            a,
            self.etcd.endpoints,
            gate=self.gate,
            dcs={
                "ttl": self.ttl,
                "loop_wait": self.loop_wait,
                "retry_timeout": self.retry_timeout,
                "synchronous_mode": self.synchronous_mode,
            },
            parameters=self.dcs_parameters,
        )

    def pgcohort_config(self, a: Agent) -> dict[str, Any]:
        doc = pgcohort_config(self.scope, a, self.pgcohort_etcd or self.etcd.endpoints)
        doc["sidecar"].update(self.sidecar_settings)
        return doc

    def start_agent(self, a: Agent) -> None:
        env = {
            "PATH": f"{PG_BIN}:/usr/bin:/bin",
            "PYTHONPATH": self.pythonpath,
            "LANG": "C.UTF-8",
            "HOME": a.home,
        }
        argv, who = self._as_postgres(a, [PATRONI, a.conf_dir])
        log = open(a.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        a.proc = subprocess.Popen(
            argv,
            **who,
            env=env,
            cwd=a.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _as_postgres(self, a: Agent, cmd: list[str]) -> tuple[list[str], dict[str, Any]]:
        """``cmd`` and the Popen arguments that run it as postgres (no extra groups) on node ``a``.

        In a namespace the switch happens inside it (entering one needs root), by programs that
        exec in place: the spawned PID is still ``cmd``'s own process.
        """
        uid, gid = _pg_ids()
        if a.host is not None:
            return a.host.argv(cmd, user=uid), {}
        return cmd, {"user": uid, "group": gid, "extra_groups": []}

    def start_sidecar(self, a: Agent) -> SidecarProcess:
        car = SidecarProcess(
            a.name,
            a.sidecar_port,
            os.path.join(self.root, f"sidecar-{a.name}.log"),
            self.sidecar_env(a),
            host=a.address,
            launcher=a.host.argv([]) if a.host is not None else [],
        )
        car.start()
        car.wait_http()
        a.sidecar = car
        return car

    def sidecar_env(self, a: Agent) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGCOHORT_")}
        return {**env, "PGCOHORT_CONFIG": a.pgcohort_config, "PYTHONPATH": self.pythonpath}

    # --- waiting ------------------------------------------------------------------------

    def wait(self, what: str, check: Any, timeout: float = 90.0, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                value = check()
                if value:
                    return value
            if time.monotonic() > deadline:
                tail = "\n".join(f"--- {n}\n{a.log[-2500:]}" for n, a in self.agents.items())
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
            time.sleep(interval)

    def members(self) -> list[dict[str, Any]]:
        for a in self.agents.values():
            if a.proc is None or a.proc.poll() is not None:
                continue
            with contextlib.suppress(OSError, ValueError):
                _, got = a.get("/cluster")
                return list(got.get("members", []))
        return []

    def leader(self) -> str | None:
        """The member holding Patroni's leader key whose PostgreSQL accepts writes (promotion finished)."""
        name = next((m["name"] for m in self.members() if m.get("role") == "leader"), None)
        if name is None or name not in self.agents:
            return None
        try:
            with psycopg.connect(self.agents[name].dsn, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return None
        return name if row is not None and not row[0] else None

    def wait_leader(self, timeout: float = 90.0, *, not_: str | None = None) -> str:
        return str(self.wait("a running leader", lambda: (lead := self.leader()) and lead != not_ and lead, timeout))

    def streaming(self, names: list[str]) -> bool:
        states = {m["name"]: m.get("state") for m in self.members()}
        return all(states.get(n) == "streaming" for n in names)

    def wait_streaming(self, names: list[str], timeout: float = 90.0) -> None:
        self.wait(f"{', '.join(names)} streaming", lambda: self.streaming(names), timeout)

    # --- faults ---------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """kill -9 of the node's Patroni agent and its PostgreSQL (postmaster and every child)."""
        a = self.agents[name]
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
        pid = a.postmaster_pid()
        if pid is not None:
            kill_postmaster(pid)

    def pause_agent(self, name: str) -> None:
        proc = self.agents[name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)

    def resume_agent(self, name: str) -> None:
        proc = self.agents[name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGCONT)

    def wal_receiver(self, name: str) -> int | None:
        """The pid of the node's WAL receiver process, if one runs."""
        pid = self.agents[name].postmaster_pid()
        if pid is None:
            return None
        for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
                if b"walreceiver" in f.read():
                    return int(child)
        return None

    # --- tools ----------------------------------------------------------------------------

    def patronictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        a = next(iter(self.agents.values()))
        return subprocess.run(
            [PATRONICTL, "-c", os.path.join(a.conf_dir, "00-patroni.yml"), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def pgcohort(self, *args: str, node: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The pgcohort CLI with node's config (default: the first node), inside the node's namespace if any."""
        a = self.agents[node] if node else next(iter(self.agents.values()))
        env = {**self.sidecar_env(a), "PGCOHORT_ACTOR": self.actor}
        argv = [PGCOHORT, *args, "--config", a.pgcohort_config]
        return subprocess.run(
            a.host.argv(argv) if a.host is not None else argv, capture_output=True, text=True, env=env, check=check
        )

    def gate_as_patroni(self, name: str) -> subprocess.CompletedProcess[str]:
        """Run the pre_promote command exactly as Patroni would: as postgres, no arguments added, bare env,
        in the node's namespace if it has one."""
        a = self.agents[name]
        argv, who = self._as_postgres(a, [PGCOHORT, "gate", "--config", a.pgcohort_config])
        return subprocess.run(
            argv,
            **who,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": self.pythonpath, "HOME": a.home},
            cwd=a.home,
            capture_output=True,
            text=True,
        )

    def close(self) -> None:
        """Kill every sidecar, agent and PostgreSQL, and delete their files (the network is the caller's). Called
        while a test fails, it first prints the end of every Patroni and sidecar log: CI keeps the output, not the
        files."""
        if sys.exc_info()[0] is not None:
            logs = [a.log_path for a in self.agents.values()]
            logs += [a.sidecar.log_path for a in self.agents.values() if a.sidecar is not None]
            for path in logs:
                with contextlib.suppress(OSError), open(path, errors="replace") as f:
                    tail = f.read().splitlines()[-40:]
                    print(f"\n--- the last {len(tail)} lines of {path}", *tail, sep="\n")
        for a in self.agents.values():
            if a.sidecar is not None:
                a.sidecar.kill()
        for name in list(self.agents):
            with contextlib.suppress(OSError):
                self.kill(name)
        shutil.rmtree(self.root, ignore_errors=True)


def patroni_config(
    scope: str,
    a: Agent,
    etcd_endpoints: list[str],
    *,
    gate: bool = True,
    dcs: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Patroni's own file for node ``a`` (``conf.d/00-patroni.yml``)."""
    hba = [
        "local all all trust",
        "host replication replicator 127.0.0.1/32 trust",
        "host all all 127.0.0.1/32 trust",
    ]
    if a.host is not None:  # the other nodes and the test process, over the bridge
        hba += [f"host replication replicator {a.host.subnet} trust", f"host all all {a.host.subnet} trust"]
    postgresql: dict[str, Any] = {
        "listen": f"{a.address}:{a.pg_port}",
        "connect_address": f"{a.address}:{a.pg_port}",
        "data_dir": a.data_dir,
        "bin_dir": PG_BIN,
        "pgpass": os.path.join(a.home, "pgpass"),
        "authentication": {
            "replication": {"username": "replicator", "password": "rep-pass"},
            "superuser": {"username": "postgres", "password": "postgres-pass"},
            "rewind": {"username": "postgres", "password": "postgres-pass"},
        },
        "pg_hba": hba,
        "parameters": {"unix_socket_directories": a.home},
    }
    if gate:
        postgresql["pre_promote"] = f"{PGCOHORT} gate --config {a.pgcohort_config}"
    restapi: dict[str, Any] = {"listen": f"{a.address}:{a.rest_port}", "connect_address": f"{a.address}:{a.rest_port}"}
    tls: dict[str, Any] = {}
    if a.tls:  # HTTPS with client certificates required; Patroni's own calls to other members present ctl's
        restapi |= {"certfile": a.tls_file("server.pem"), "keyfile": a.tls_file("server-key.pem"),
                    "cafile": a.tls_file("ca.pem"), "verify_client": "required"}  # fmt: skip
        tls["ctl"] = {"certfile": a.tls_file("client.pem"), "keyfile": a.tls_file("client-key.pem"),
                      "cacert": a.tls_file("ca.pem")}  # fmt: skip
    return {
        "scope": scope,
        "namespace": "/service",
        "name": a.name,
        "log": {"level": "INFO"},
        "restapi": restapi,
        **tls,
        "etcd3": {"hosts": [e.removeprefix("http://") for e in etcd_endpoints]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": "off",
                **(dcs or {}),
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    # fsync off: the tests' servers die by kill -9, never by power loss (the OS keeps the pages)
                    "parameters": {"wal_log_hints": "on", "fsync": "off", **(parameters or {})},
                },
            },
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
        },
        "postgresql": postgresql,
        "tags": {"zone": a.zone},
    }


def pgcohort_config(scope: str, a: Agent, etcd_endpoints: list[str]) -> dict[str, Any]:
    """The one pgcohort file of node ``a``: its sidecar and its gate (Patroni's pre_promote) read it."""
    patroni: dict[str, Any] = {"url": a.api, "config_dir": a.conf_dir}
    if a.tls:
        patroni |= {
            "cacert": a.tls_file("ca.pem"),
            "cert": a.tls_file("client.pem"),
            "key": a.tls_file("client-key.pem"),
        }
    return {
        "cluster": scope,
        "etcd": {"endpoints": etcd_endpoints, "timeout": 1.0, "retry_for": 3.0},
        "node": {"name": a.name, "zone": a.zone, "host": a.address, "port": a.pg_port},
        "postgres": {"dsn": a.dsn, "member_options": "user=postgres dbname=postgres connect_timeout=2"},
        "sidecar": {"listen": f"{a.address}:{a.sidecar_port}", "interval": 0.5, "ttl": 3, "adapter": "patroni"},
        "patroni": patroni,
    }


if __name__ == "__main__":  # a quick look: python -m tests.patroni
    etcd = EtcdCluster(3).start()
    pc = PatroniCluster(etcd, "look")
    try:
        for n in ("pg0", "pg1", "pg2"):
            pc.add(n, sidecar=False)
        print("leader", pc.wait_leader())
        pc.wait_streaming(["pg1", "pg2"])
        print(pc.patronictl("list").stdout)
    finally:
        pc.close()
        etcd.close()
        sys.exit(0)
