"""A real repmgr 5.3 cluster on loopback for tests and benchmarks: PostgreSQL 15 nodes, repmgr's
metadata, and one real ``repmgrd`` per node.

Each node has its own home (``<root>/<name>/``, owned by ``postgres``): the data directory,
PostgreSQL's log, its ``repmgr.conf`` and the log ``repmgrd`` and the ``repmgr`` commands it runs
(``promote_command``, ``follow_command``) write. PostgreSQL is started with ``pg_ctl`` as
``postgres`` (as ``repmgr standby follow``/``node rejoin`` expect to find it), listening on a free
loopback port and a Unix socket in the node's home, with trust authentication, and
``shared_preload_libraries = 'repmgr'`` (repmgrd's shared memory). repmgr's metadata lives in the
``postgres`` database, reached as the ``postgres`` superuser (``standby_disconnect_on_failover``
and ``pg_promote()`` need a superuser); the conninfo of every node is ``host=127.0.0.1 port=N``.

repmgr refuses to run as root, so every ``repmgr``/``repmgrd``/``pg_ctl`` runs as ``postgres``
(``subprocess`` with ``user=``; no sudo). ``repmgrd`` runs in the foreground (``--daemonize=false``)
as a child of this process, in a session of its own.

The monitoring timings default to fast-but-sane values for tests (``Timings``); the defaults
repmgr ships are ``Timings.repmgr_defaults()``. A ``failover_validation_command`` and an
``event_notification_command`` can be set for the whole cluster or per node (repmgr's docs say the
validation command must be the same on all nodes); ``ValidationScript`` and ``EventScript`` are
small stand-ins that log their arguments (the gate will take the validation script's place).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from tests.pg import PG_BIN, _pg_ids, as_postgres, kill_postmaster
from tests.servers import free_ports

REPMGR = f"{PG_BIN}/repmgr"
REPMGRD = f"{PG_BIN}/repmgrd"
T = TypeVar("T")


def repmgr_available() -> bool:
    return os.path.exists(REPMGR) and os.path.exists(REPMGRD) and os.path.exists(f"{PG_BIN}/postgres")


@dataclass(frozen=True)
class Timings:
    """repmgrd's monitoring and failover timings (seconds), written into every node's repmgr.conf.

    How long repmgrd takes to act on a dead primary: one failed check every ``monitor_interval_secs``,
    then ``reconnect_attempts`` attempts ``reconnect_interval`` apart (a sleep between attempts only),
    then the election. A vetoed candidate waits ``election_rerun_interval``, marks the primary up
    again and goes through the same detection before the next election.
    """

    monitor_interval_secs: int = 1
    reconnect_attempts: int = 2
    reconnect_interval: int = 1
    election_rerun_interval: int = 2
    primary_notification_timeout: int = 20
    repmgrd_standby_startup_timeout: int = 20
    standby_reconnect_timeout: int = 20
    node_rejoin_timeout: int = 20  # <= standby_reconnect_timeout, or repmgr refuses the file
    standby_follow_timeout: int = 20
    promote_check_timeout: int = 20
    promote_check_interval: int = 1
    sibling_nodes_disconnect_timeout: int = 5
    async_query_timeout: int = 10

    @staticmethod
    def repmgr_defaults() -> Timings:
        """repmgr 5.3.3's own defaults (repmgr.h DEFAULT_*)."""
        return Timings(
            monitor_interval_secs=2,
            reconnect_attempts=6,
            reconnect_interval=10,
            election_rerun_interval=15,
            primary_notification_timeout=60,
            repmgrd_standby_startup_timeout=60,
            standby_reconnect_timeout=60,
            node_rejoin_timeout=60,
            standby_follow_timeout=30,
            promote_check_timeout=60,
            promote_check_interval=1,
            sibling_nodes_disconnect_timeout=30,
            async_query_timeout=60,
        )

    def detection(self) -> float:
        """Seconds from a dead primary to repmgrd's election, about (a refused connection is immediate)."""
        return self.monitor_interval_secs + max(self.reconnect_attempts - 1, 0) * self.reconnect_interval

    def lines(self) -> list[str]:
        return [f"{f.name}={getattr(self, f.name)}" for f in fields(self)]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed postmaster started by pg_ctl is reparented to
    init, which may reap it late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _conf_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if "'" in value:
        raise ValueError(f"repmgr.conf values cannot hold a single quote: {value!r}")
    return f"'{value}'"


@dataclass
class RepmgrNode:
    """One node: its PostgreSQL, its repmgr.conf and its repmgrd."""

    name: str
    node_id: int
    port: int
    home: str
    location: str = "default"
    priority: int = 100
    validation_command: str | None = None
    event_command: str | None = None
    extra: dict[str, str | int | bool] = field(default_factory=dict)
    repmgrd: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> str:
        return os.path.join(self.home, "data")

    @property
    def conf_path(self) -> str:
        return os.path.join(self.home, "repmgr.conf")

    @property
    def pg_log_path(self) -> str:
        return os.path.join(self.home, "postgres.log")

    @property
    def log_path(self) -> str:
        """repmgrd's log, and the log of the repmgr commands repmgrd runs (--log-to-file)."""
        return os.path.join(self.home, "repmgrd.log")

    @property
    def conninfo(self) -> str:
        """What repmgr stores in repmgr.nodes and every node uses to reach this one."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=2"

    @property
    def dsn(self) -> str:
        return self.conninfo

    @property
    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                pid = int(f.readline().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def repmgrd_running(self) -> bool:
        return self.repmgrd is not None and self.repmgrd.poll() is None

    def query(self, sql: str, params: tuple[Any, ...] = (), timeout: int = 2) -> list[dict[str, Any]]:
        """Rows of ``sql`` on this node (a connection of its own, closed again)."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=timeout, row_factory=dict_row) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def in_recovery(self) -> bool | None:
        """True on a standby, False on a primary, None when it does not answer."""
        try:
            rows = self.query("SELECT pg_is_in_recovery() AS r")
        except psycopg.Error:
            return None
        return bool(rows[0]["r"])

    def conf_lines(self, cluster: RepmgrCluster) -> list[str]:
        bindir = PG_BIN
        settings: dict[str, str | int | bool] = {
            "node_id": self.node_id,
            "node_name": self.name,
            "conninfo": self.conninfo,
            "data_directory": self.data_dir,
            "pg_bindir": bindir,
            "location": self.location,
            "priority": self.priority,
            "use_replication_slots": False,
            "log_level": cluster.log_level,
            "log_file": self.log_path,
            "repmgrd_pid_file": os.path.join(self.home, "repmgrd.pid"),
            "failover": "automatic",
            # Full paths: repmgrd runs both with system(), with its own environment.
            "promote_command": f"{REPMGR} standby promote -f {self.conf_path} --log-to-file",
            "follow_command": f"{REPMGR} standby follow -f {self.conf_path} --log-to-file --upstream-node-id=%n",
        }
        validation = self.validation_command if self.validation_command is not None else cluster.validation_command
        if validation:
            settings["failover_validation_command"] = validation
        event = self.event_command if self.event_command is not None else cluster.event_command
        if event:
            settings["event_notification_command"] = event
        settings.update(cluster.extra)
        settings.update(self.extra)
        return [f"{k}={_conf_value(v)}" for k, v in settings.items()] + cluster.timings.lines()


@dataclass
class ScriptCall:
    """One run of a hook script: when (the script's own clock, time.time()), and its arguments."""

    at: float
    verdict: str
    args: list[str]


class _Hook:
    """A shell script in a directory the postgres user owns, logging each call to ``calls.log``."""

    body = ""

    def __init__(self, root: str, name: str) -> None:
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        uid, gid = _pg_ids()
        os.chown(self.dir, uid, gid)
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, f"{name}.sh")
        with open(self.path, "w") as f:
            f.write(self.body)
        os.chmod(self.path, 0o755)
        self.log_path = os.path.join(self.dir, "calls.log")

    def _lines(self) -> list[list[str]]:
        try:
            with open(self.log_path, errors="replace") as f:
                return [line.rstrip("\n").split("\t") for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def _flag(self, name: str, content: str | None) -> None:
        path = os.path.join(self.dir, name)
        if content is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        with open(path, "w") as f:
            f.write(content)
        uid, gid = _pg_ids()
        os.chown(path, uid, gid)


class ValidationScript(_Hook):
    """A stand-in for the gate as ``failover_validation_command``: logs its arguments, exits 1 (veto)
    or 0 (allow) by flag files. It prints one line on stdout only: repmgrd reads the first line of
    the command's stdout and then closes the pipe (sysutils.c _local_command), so a second line
    written later would get SIGPIPE, and a shell killed by SIGPIPE reads as exit status 0 (allow).
    """

    body = r"""#!/bin/sh
# failover_validation_command stand-in (tests/repmgr.py): $1..$5 = %n %a %v %u %t
dir=$(dirname "$0")
verdict=allow
if [ -e "$dir/veto-always" ] || [ -e "$dir/veto-node-$2" ]; then
  verdict=veto
elif [ -s "$dir/veto-count" ]; then
  n=$(cat "$dir/veto-count")
  if [ "$n" -gt 0 ]; then verdict=veto; echo $((n - 1)) > "$dir/veto-count"; fi
fi
{ printf '%s\t%s' "$(date +%s.%N)" "$verdict"; for a in "$@"; do printf '\t%s' "$a"; done; printf '\n'; } >> "$dir/calls.log"
if [ -s "$dir/sleep" ]; then sleep "$(cat "$dir/sleep")"; fi
echo "validation stand-in: $verdict node $1 ($2), visible $3 of $4, total $5"
[ "$verdict" = allow ]
"""

    def __init__(self, root: str, name: str = "validation") -> None:
        super().__init__(root, name)

    @property
    def command(self) -> str:
        return f"{self.path} %n %a %v %u %t"

    def allow(self) -> None:
        for flag in ("veto-always", "veto-count"):
            self._flag(flag, None)
        for f in os.listdir(self.dir):
            if f.startswith("veto-node-"):
                self._flag(f, None)

    def veto_always(self) -> None:
        self._flag("veto-always", "")

    def veto_times(self, n: int) -> None:
        """Veto the next ``n`` calls, then allow."""
        self._flag("veto-count", str(n))

    def veto_node(self, name: str, on: bool = True) -> None:
        self._flag(f"veto-node-{name}", "" if on else None)

    def delay(self, seconds: float | None) -> None:
        """Make each call take ``seconds`` (what a gate's survey costs)."""
        self._flag("sleep", None if seconds is None else str(seconds))

    def calls(self) -> list[ScriptCall]:
        return [ScriptCall(float(p[0]), p[1], p[2:]) for p in self._lines() if len(p) >= 2]


class EventScript(_Hook):
    """``event_notification_command``: logs ``%n %e %s "%t" "%d"`` (tab-separated) per event."""

    body = r"""#!/bin/sh
# event_notification_command stand-in (tests/repmgr.py): $1..$5 = %n %e %s "%t" "%d"
{ printf '%s\tevent' "$(date +%s.%N)"; for a in "$@"; do printf '\t%s' "$(printf '%s' "$a" | tr '\t\n' '  ')"; done; printf '\n'; } >> "$(dirname "$0")/calls.log"
"""

    def __init__(self, root: str, name: str = "events") -> None:
        super().__init__(root, name)

    @property
    def command(self) -> str:
        return f'{self.path} %n %e %s "%t" "%d"'

    def calls(self) -> list[ScriptCall]:
        return [ScriptCall(float(p[0]), p[1], p[2:]) for p in self._lines() if len(p) >= 2]

    def events(self) -> list[tuple[int, str, bool]]:
        """(node_id, event, successful) in the order they were delivered."""
        return [(int(c.args[0]), c.args[1], c.args[2] == "1") for c in self.calls() if len(c.args) >= 3]


@dataclass
class RepmgrCluster:
    """PostgreSQL 15 nodes registered with repmgr, one repmgrd each."""

    timings: Timings = field(default_factory=Timings)
    validation_command: str | None = None  # default for every node (repmgr: must be identical on all nodes)
    event_command: str | None = None
    extra: dict[str, str | int | bool] = field(default_factory=dict)  # more repmgr.conf lines, every node
    log_level: str = "INFO"
    nodes: dict[str, RepmgrNode] = field(default_factory=dict)
    validation: ValidationScript | None = None  # set by use_validation_script()
    event_script: EventScript | None = None  # set by use_event_script()

    def __post_init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pgcohort-repmgr-")
        os.chmod(self.root, 0o755)
        os.chown(self.root, *_pg_ids())

    def use_validation_script(self) -> ValidationScript:
        """The stand-in validation script as every node's failover_validation_command (call before
        adding nodes, or reload() each node after)."""
        self.validation = ValidationScript(self.root)
        self.validation_command = self.validation.command
        return self.validation

    def use_event_script(self) -> EventScript:
        """The logging event script as every node's event_notification_command."""
        self.event_script = EventScript(self.root)
        self.event_command = self.event_script.command
        return self.event_script

    # --- building --------------------------------------------------------------------------

    def _new_node(self, name: str, **kw: Any) -> RepmgrNode:
        (port,) = free_ports(1)
        home = os.path.join(self.root, name)
        os.makedirs(home)
        os.chown(home, *_pg_ids())
        os.chmod(home, 0o755)
        node = RepmgrNode(name, len(self.nodes) + 1, port, home, **kw)
        self.nodes[name] = node
        self.write_conf(node)
        return node

    def write_conf(self, node: RepmgrNode) -> None:
        """(Re)write the node's repmgr.conf; a running repmgrd reads it again on SIGHUP (reload())."""
        with open(node.conf_path, "w") as f:
            f.write("\n".join(node.conf_lines(self)) + "\n")
        os.chmod(node.conf_path, 0o644)

    def _postgresql_conf(self, node: RepmgrNode) -> str:
        return (
            f"\n# tests/repmgr.py: node {node.name}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {node.port}\n"
            f"unix_socket_directories = '{node.home}'\n"
        )

    def add_primary(self, name: str, **kw: Any) -> RepmgrNode:
        """initdb, start, ``repmgr primary register`` (creates the repmgr extension)."""
        node = self._new_node(name, **kw)
        as_postgres(
            [f"{PG_BIN}/initdb", "-D", node.data_dir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        )
        with open(os.path.join(node.data_dir, "postgresql.conf"), "a") as f:
            f.write(
                "\nshared_preload_libraries = 'repmgr'\n"
                "wal_level = replica\nmax_wal_senders = 16\nmax_replication_slots = 16\nhot_standby = on\n"
                "wal_log_hints = on\nwal_keep_size = '256MB'\nshared_buffers = '32MB'\nmax_connections = 50\n"
                # fsync off: the tests' servers die by kill -9, never by power loss (the OS keeps the pages)
                "fsync = off\nwal_receiver_status_interval = 1\nwal_sender_timeout = '10s'\n"
                "log_min_messages = warning\nlog_line_prefix = '%m [%p] '\n" + self._postgresql_conf(node)
            )
        with open(os.path.join(node.data_dir, "pg_hba.conf"), "a") as f:
            f.write("\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n")
        self.start_postgres(name)
        self.repmgr(name, "primary", "register")
        return node

    def add_standby(self, name: str, upstream: str | None = None, *, register: bool = True, **kw: Any) -> RepmgrNode:
        """``repmgr standby clone`` from ``upstream`` (default: the primary), start, ``standby register``."""
        src = self.nodes[upstream] if upstream else self.nodes[self.wait_primary(10)]
        node = self._new_node(name, **kw)
        self.repmgr(
            name,
            "-h", "127.0.0.1", "-p", str(src.port), "-U", "postgres", "-d", "postgres",
            "standby", "clone", "--fast-checkpoint",
        )  # fmt: skip
        with open(os.path.join(node.data_dir, "postgresql.conf"), "a") as f:
            f.write(self._postgresql_conf(node))  # the copy says the primary's port and socket
        self.start_postgres(name)
        if register:
            self.repmgr(name, "standby", "register", "--wait-sync=30")
        return node

    def start_postgres(self, name: str, timeout: int = 30) -> None:
        node = self.nodes[name]
        as_postgres(
            [f"{PG_BIN}/pg_ctl", "-D", node.data_dir, "-l", node.pg_log_path, "-w", "-t", str(timeout), "start"],
            timeout=timeout + 10,
        )

    def stop_postgres(self, name: str, mode: str = "fast") -> None:
        node = self.nodes[name]
        if node.postmaster_pid() is not None:
            as_postgres([f"{PG_BIN}/pg_ctl", "-D", node.data_dir, "-m", mode, "-w", "-t", "30", "stop"], timeout=40)

    # --- repmgrd -----------------------------------------------------------------------------

    def start_repmgrd(self, name: str, timeout: float = 20.0) -> None:
        """repmgrd in the foreground as postgres; waits until it registered its pid in shared memory."""
        node = self.nodes[name]
        uid, gid = _pg_ids()
        env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": node.home, "LANG": "C.UTF-8", "TMPDIR": node.home}
        out = open(os.path.join(node.home, "repmgrd.stderr"), "ab")  # noqa: SIM115 (kept by the child)
        node.repmgrd = subprocess.Popen(
            [REPMGRD, "-f", node.conf_path, "--daemonize=false"],
            user=uid,
            group=gid,
            extra_groups=[],
            env=env,
            cwd=node.home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        proc = node.repmgrd
        self.wait(
            f"repmgrd on {name} registered",
            lambda: proc.poll() is None and self._repmgrd_pid(node) == proc.pid,
            timeout,
            failed=lambda: proc.poll() is not None,
        )

    def start_all_repmgrd(self) -> None:
        for name in self.nodes:
            self.start_repmgrd(name)

    def _repmgrd_pid(self, node: RepmgrNode) -> int | None:
        try:
            rows = node.query("SELECT repmgr.get_repmgrd_pid() AS pid")
        except psycopg.Error:
            return None
        pid = rows[0]["pid"]
        return int(pid) if pid is not None else None

    def repmgrd_state(self, name: str) -> dict[str, Any] | None:
        """What the node's repmgrd keeps in PostgreSQL's shared memory (repmgr.so): its pid, the
        upstream it last saw and how many seconds ago, whether it is paused, the node it was told to
        follow (-2: rerun the election), or None when the node does not answer."""
        try:
            rows = self.nodes[name].query(
                "SELECT repmgr.get_repmgrd_pid() AS pid, repmgr.get_upstream_node_id() AS upstream,"
                " repmgr.get_upstream_last_seen() AS last_seen, repmgr.repmgrd_is_paused() AS paused,"
                " repmgr.get_new_primary() AS notified"
            )
        except psycopg.Error:
            return None
        return rows[0]

    def wait_settled(self, primary: str, timeout: float = 60.0) -> None:
        """Until the failover to ``primary`` is over as repmgr sees it: the metadata names it primary
        and every running standby's upstream, its repmgrd monitors as primary, and each running
        standby's repmgrd saw it within two monitoring intervals. (A node killed before that, while
        a ``repmgr standby promote``/``follow`` still runs, leaves the followers' repmgrd to restart
        monitoring against a dead upstream, and repmgrd then exits: "upstream node must be running
        before repmgrd can start".)"""
        p = self.nodes[primary]
        fresh = 2 * self.timings.monitor_interval_secs

        def settled() -> bool:
            rows = {r["node_name"]: r for r in self.metadata(primary)}
            if rows[primary]["type"] != "primary" or not rows[primary]["active"]:
                return False
            proc, state = p.repmgrd, self.repmgrd_state(primary)
            running = proc is not None and proc.poll() is None
            if running and (state is None or proc is None or state["pid"] != proc.pid or state["upstream"] != -1):
                return False
            for n, node in self.nodes.items():
                if n == primary or node.postmaster_pid() is None or not node.repmgrd_running:
                    continue
                state = self.repmgrd_state(n)
                if rows[n]["upstream_node_id"] != p.node_id or state is None or state["upstream"] != p.node_id:
                    return False
                if not 0 <= state["last_seen"] <= fresh:
                    return False
            return True

        self.wait(f"repmgr settled on {primary}", settled, timeout)

    def stop_repmgrd(self, name: str) -> None:
        """SIGTERM: repmgrd exits cleanly and unsets its pid in shared memory, so the other nodes'
        elections skip this node ("repmgrd not running on node ..., skipping")."""
        node = self.nodes[name]
        if node.repmgrd_running:
            assert node.repmgrd is not None
            node.repmgrd.terminate()
            node.repmgrd.wait(15)

    def kill_repmgrd(self, name: str) -> None:
        """SIGKILL of repmgrd and of whatever it runs at that moment (its process group: a validation
        command, ``repmgr standby promote``/``follow``). Its pid stays registered in shared memory,
        so the other nodes' elections still count the node."""
        node = self.nodes[name]
        if node.repmgrd_running:
            assert node.repmgrd is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.repmgrd.pid, signal.SIGKILL)
            node.repmgrd.wait()

    def pause_repmgrd(self, name: str) -> None:
        proc = self.nodes[name].repmgrd
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)

    def resume_repmgrd(self, name: str) -> None:
        proc = self.nodes[name].repmgrd
        assert proc is not None
        os.kill(proc.pid, signal.SIGCONT)

    def reload(self, name: str) -> None:
        """Rewrite the node's repmgr.conf and SIGHUP its repmgrd."""
        node = self.nodes[name]
        self.write_conf(node)
        if node.repmgrd_running:
            assert node.repmgrd is not None
            node.repmgrd.send_signal(signal.SIGHUP)

    # --- faults ------------------------------------------------------------------------------

    def kill(self, name: str, *, repmgrd: bool = True) -> float:
        """kill -9 of the node's PostgreSQL (postmaster and every child) and, by default, its repmgrd
        (the whole machine gone). Returns time.monotonic() right after the kill."""
        node = self.nodes[name]
        if repmgrd:
            self.kill_repmgrd(name)
        pid = node.postmaster_pid()
        if pid is not None:
            kill_postmaster(pid)
        killed = time.monotonic()
        deadline = killed + 10
        while node.postmaster_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return killed

    def wal_receiver(self, name: str) -> int | None:
        """The pid of the node's WAL receiver process, if one runs."""
        pid = self.nodes[name].postmaster_pid()
        if pid is None:
            return None
        for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
                if b"walreceiver" in f.read():
                    return int(child)
        return None

    # --- state -------------------------------------------------------------------------------

    def primaries(self) -> list[str]:
        """Nodes whose PostgreSQL answers and is not in recovery."""
        return [n for n, node in self.nodes.items() if node.postmaster_pid() and node.in_recovery() is False]

    def writable(self, name: str) -> bool:
        """True when a write commits on the node (its promotion finished)."""
        try:
            with psycopg.connect(self.nodes[name].dsn, autocommit=True, connect_timeout=2) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS harness_probe (at timestamptz)")
                conn.execute("INSERT INTO harness_probe VALUES (now())")
        except psycopg.Error:
            return False
        return True

    def wait_primary(self, timeout: float = 60.0, *, not_: Iterable[str] = ()) -> str:
        """The one writable primary (not in ``not_``), once there is exactly one."""
        excluded = set(not_)

        def one() -> str | None:
            found = [n for n in self.primaries() if n not in excluded]
            return found[0] if len(found) == 1 and self.writable(found[0]) else None

        return self.wait("a writable primary" + (f" other than {sorted(excluded)}" if excluded else ""), one, timeout)

    def settle(self, timeout: float = 15.0) -> None:
        """A write on the primary, then wait until every running standby replayed past it.

        Kill a primary only after this when a test needs a clean cut: a primary killed while a
        record spanning a page is half flushed leaves its standbys holding the same bytes past the
        last complete record (the WAL writer flushes whole pages); their receive LSN, which repmgr
        compares, is then beyond the end of valid WAL, and ``repmgr standby follow`` refuses a
        promoted peer with identical valid WAL ("this node cannot attach to follow target node":
        its receive LSN is past the new timeline's fork point).
        """
        primary = self.wait_primary(timeout)
        self.writable(primary)
        rows = self.nodes[primary].query("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn AS at")
        target = int(rows[0]["at"])
        standbys = [n for n, node in self.nodes.items() if n != primary and node.postmaster_pid() is not None]

        def replayed(name: str) -> bool:
            got = self.nodes[name].query("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn AS at")
            return got[0]["at"] is not None and int(got[0]["at"]) >= target

        self.wait(
            f"{', '.join(standbys)} replayed past {target:X}", lambda: all(replayed(n) for n in standbys), timeout
        )

    def upstream_of(self, name: str) -> str | None:
        """The node this standby's WAL receiver streams from right now (pg_stat_wal_receiver)."""
        try:
            rows = self.nodes[name].query("SELECT status, sender_port FROM pg_stat_wal_receiver")
        except psycopg.Error:
            return None
        if not rows or rows[0]["status"] != "streaming":
            return None
        port = rows[0]["sender_port"]
        return next((n for n, node in self.nodes.items() if node.port == port), None)

    def wait_following(self, name: str, primary: str, timeout: float = 60.0) -> None:
        self.wait(f"{name} streaming from {primary}", lambda: self.upstream_of(name) == primary, timeout)

    def metadata(self, name: str | None = None) -> list[dict[str, Any]]:
        """``repmgr.nodes`` as rows, read on ``name`` (default: the first node that answers)."""
        return self._rows("SELECT * FROM repmgr.nodes ORDER BY node_id", name)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """``repmgr.events``, oldest first."""
        return self._rows("SELECT * FROM repmgr.events ORDER BY event_timestamp, node_id", name)

    def voting_term(self, name: str | None = None) -> int | None:
        rows = self._rows("SELECT term FROM repmgr.voting_term", name)
        return int(rows[0]["term"]) if rows else None

    def _rows(self, sql: str, name: str | None) -> list[dict[str, Any]]:
        candidates = [name] if name else list(self.nodes)
        for n in candidates:
            with contextlib.suppress(psycopg.Error):
                return self.nodes[n].query(sql)
        raise RuntimeError(f"no node answered: {sql}")

    def repmgr(
        self, name: str, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The ``repmgr`` CLI with the node's repmgr.conf, as postgres."""
        argv = [REPMGR, "-f", self.nodes[name].conf_path, *args]
        if check:
            return as_postgres(argv, timeout=timeout)
        return subprocess.run(
            argv,
            user="postgres",
            group="postgres",
            extra_groups=[],
            capture_output=True,
            text=True,
            cwd="/",
            timeout=timeout,
        )

    def log_lines(self, name: str, *needles: str) -> list[str]:
        """The node's repmgrd log lines containing every one of ``needles``."""
        return [line for line in self.nodes[name].log.splitlines() if all(n in line for n in needles)]

    def wait(
        self,
        what: str,
        check: Callable[[], T | None],
        timeout: float = 60.0,
        interval: float = 0.2,
        failed: Callable[[], bool] | None = None,
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError, psycopg.Error):
                value = check()
                if value:
                    return value
            if time.monotonic() > deadline or (failed is not None and failed()):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.tails()}")
            time.sleep(interval)

    def tails(self, chars: int = 3000) -> str:
        out = []
        for n, node in self.nodes.items():
            try:
                with open(node.pg_log_path, errors="replace") as f:
                    pg_log = f.read()[-chars // 2 :]
            except FileNotFoundError:
                pg_log = ""
            out.append(f"--- {n} repmgrd.log\n{node.log[-chars:]}\n--- {n} postgres.log\n{pg_log}")
        return "\n".join(out)

    def close(self) -> None:
        """Kill every repmgrd and PostgreSQL, and delete their files."""
        for name in self.nodes:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.kill_repmgrd(name)
        for node in self.nodes.values():
            pid = node.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(OSError):
                    kill_postmaster(pid)
        if os.environ.get("PGCOHORT_KEEP_REPMGR"):  # debugging: keep the logs
            print(f"repmgr cluster files kept in {self.root}")
            return
        shutil.rmtree(self.root, ignore_errors=True)


def build(
    names: Iterable[str] = ("pg0", "pg1", "pg2"),
    *,
    repmgrd: bool = True,
    validation: bool = False,
    events: bool = False,
    locations: Mapping[str, str] | None = None,
    **kw: Any,
) -> RepmgrCluster:
    """A cluster with the first name as primary and the others cloned from it, repmgrd on each;
    ``validation``/``events``: the stand-in scripts (cluster.validation, cluster.event_script)."""
    cluster = RepmgrCluster(**kw)
    try:
        if validation:
            cluster.use_validation_script()
        if events:
            cluster.use_event_script()
        first, *rest = list(names)
        loc = dict(locations or {})
        cluster.add_primary(first, location=loc.get(first, "default"))
        for n in rest:
            cluster.add_standby(n, first, location=loc.get(n, "default"))
        if repmgrd:
            cluster.start_all_repmgrd()
    except BaseException:
        cluster.close()
        raise
    return cluster


def members_from_metadata(rows: Iterable[Mapping[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """What ``init --from-repmgr`` could read from ``repmgr.nodes``: the active primary's name and
    every active physical node as name, host, port, location (a zone), priority, type, upstream."""
    rows = list(rows)
    by_id = {int(r["node_id"]): r for r in rows}
    primary = next((str(r["node_name"]) for r in rows if r["type"] == "primary" and r["active"]), None)
    members = []
    for r in rows:
        if not r["active"] or r["type"] not in ("primary", "standby"):
            continue
        params = conninfo_to_dict(str(r["conninfo"]))
        upstream = by_id.get(int(r["upstream_node_id"])) if r["upstream_node_id"] is not None else None
        members.append(
            {
                "name": str(r["node_name"]),
                "host": params.get("host") or params.get("hostaddr"),
                "port": int(str(params.get("port") or 5432)),
                "zone": str(r["location"]),
                "priority": int(r["priority"]),
                "type": str(r["type"]),
                "upstream": str(upstream["node_name"]) if upstream else None,
            }
        )
    return primary, members


if __name__ == "__main__":  # a quick look: python -m tests.repmgr
    c = build()
    try:
        print(c.repmgr("pg0", "cluster", "show").stdout)
        print("primary:", c.wait_primary())
    finally:
        c.close()
