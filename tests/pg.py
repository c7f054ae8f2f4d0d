"""Real PostgreSQL 15 servers for tests, demo and benchmarks: a primary and streaming standbys.

Servers run as the ``postgres`` user (PostgreSQL refuses root) as children of this process,
in a world-readable temporary directory, listening on free loopback ports with trust
authentication. Each standby's ``application_name`` is its member name.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from tests.servers import free_ports

PG_BIN = os.environ.get("PGCOHORT_PG_BIN", "/usr/lib/postgresql/15/bin")


def _pg_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def as_postgres(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        done: subprocess.CompletedProcess[str] = subprocess.run(
            args,
            user="postgres",
            group="postgres",
            extra_groups=[],
            check=True,
            capture_output=True,
            text=True,
            cwd="/",
            **kw,
        )
        return done
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{args[0]} failed: {e.stderr or e.stdout}") from None


@dataclass
class PgNode:
    name: str
    port: int
    data_dir: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=3"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class PgCluster:
    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="pgcohort-pg-"))
    nodes: dict[str, PgNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        os.chmod(self.root, 0o755)
        os.chown(self.root, *_pg_ids())

    def _new_node(self, name: str) -> PgNode:
        (port,) = free_ports(1)
        data = os.path.join(self.root, name)
        node = PgNode(name, port, data, os.path.join(self.root, name + ".log"))
        self.nodes[name] = node
        return node

    def init_primary(self, name: str) -> PgNode:
        node = self._new_node(name)
        as_postgres(
            [f"{PG_BIN}/initdb", "-D", node.data_dir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        )
        with open(os.path.join(node.data_dir, "postgresql.conf"), "a") as f:
            f.write(
                "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                "wal_level = replica\nmax_wal_senders = 16\nmax_replication_slots = 16\nhot_standby = on\n"
                "fsync = off\nfull_page_writes = off\nwal_keep_size = '256MB'\nshared_buffers = '32MB'\n"
                "wal_receiver_status_interval = 1\nwal_sender_timeout = '10s'\nlog_min_messages = warning\n"
            )
        with open(os.path.join(node.data_dir, "pg_hba.conf"), "a") as f:
            f.write("\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n")
        self.start(node)
        return node

    def secure(self, node: PgNode, certs_dir: str, role: str, password: str) -> None:
        """TLS on ``node`` (its copies made later inherit it), and a superuser ``role`` that may only log in
        over TLS with its SCRAM password; everything else keeps the suite's trust access."""
        uid, gid = _pg_ids()
        for name in ("server.pem", "server-key.pem", "ca.pem"):
            dest = os.path.join(node.data_dir, name)
            shutil.copy(os.path.join(certs_dir, name), dest)
            os.chown(dest, uid, gid)
            os.chmod(dest, 0o600)
        with open(os.path.join(node.data_dir, "postgresql.conf"), "a") as f:
            f.write(
                "\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server-key.pem'\nssl_ca_file = 'ca.pem'\n"
            )
        hba = os.path.join(node.data_dir, "pg_hba.conf")
        with open(hba) as f:
            rest = f.read()
        with open(hba, "w") as f:
            f.write(f"hostssl all {role} 127.0.0.1/32 scram-sha-256\nhost all {role} 127.0.0.1/32 reject\n" + rest)
        import psycopg
        from psycopg import sql

        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            conn.execute("SELECT pg_reload_conf()")

    def add_standby(self, name: str, primary: str) -> PgNode:
        src = self.nodes[primary]
        node = self._new_node(name)
        as_postgres(
            [
                f"{PG_BIN}/pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(src.port),
                "-U",
                "postgres",
                "-D",
                node.data_dir,
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]
        )
        self.follow(node, primary)
        self.start(node)
        return node

    def follow(self, node: PgNode, primary: str) -> None:
        """Make ``node`` a standby of ``primary`` (standby.signal + primary_conninfo)."""
        src = self.nodes[primary]
        auto = os.path.join(node.data_dir, "postgresql.auto.conf")
        # pg_basebackup copies the primary's auto.conf: drop its synchronous_standby_names.
        with open(auto) as f:
            kept = [
                line
                for line in f.read().splitlines()
                if not line.startswith(("synchronous_standby_names", "primary_conninfo"))
            ]
        kept.append(f"primary_conninfo = 'host=127.0.0.1 port={src.port} user=postgres application_name={node.name}'")
        with open(auto, "w") as f:
            f.write("\n".join(kept) + "\n")
        uid, gid = _pg_ids()
        os.chown(auto, uid, gid)
        open(os.path.join(node.data_dir, "standby.signal"), "w").close()
        os.chown(os.path.join(node.data_dir, "standby.signal"), uid, gid)
        conf = os.path.join(node.data_dir, "postgresql.conf")
        with open(conf, "a") as f:
            f.write(f"\nport = {node.port}\n")

    def start(self, node: PgNode, timeout: float = 30.0) -> None:
        with open(os.path.join(node.data_dir, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {node.port}\n")
        log = open(node.log_path, "ab")  # noqa: SIM115 (held by the child)
        node.proc = subprocess.Popen(
            [f"{PG_BIN}/postgres", "-D", node.data_dir],
            user="postgres",
            group="postgres",
            extra_groups=[],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
        log.close()
        self.wait_ready(node, timeout)

    def wait_ready(self, node: PgNode, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run([f"{PG_BIN}/pg_isready", "-h", "127.0.0.1", "-p", str(node.port), "-q"])
            if r.returncode == 0:
                return
            if not node.running or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL {node.name} did not start; see {node.log_path}")
            time.sleep(0.1)

    def crash(self, node: PgNode) -> None:
        """Simulate a crash: stop the postmaster, then SIGKILL it and every child it has."""
        if not node.running:
            return
        assert node.proc is not None
        kill_postmaster(node.proc.pid)
        node.proc.wait()

    def stop(self, node: PgNode) -> None:
        if node.running:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.crash(node)

    def close(self) -> None:
        for node in self.nodes.values():
            if node.running:
                self.crash(node)
        shutil.rmtree(self.root, ignore_errors=True)


def kill_postmaster(pid: int) -> None:
    """kill -9 of a postmaster and every child it has, with no chance to clean up (it is stopped first)."""
    os.kill(pid, signal.SIGSTOP)
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def pg_available() -> bool:
    try:
        _pg_ids()
    except KeyError:
        return False
    return os.path.exists(f"{PG_BIN}/postgres")
