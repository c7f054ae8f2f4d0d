"""Real network partitions between processes on one machine: Linux network namespaces on one bridge.

A :class:`Network` is a bridge in the root namespace (where the test process and etcd live)
and one namespace per :class:`Host`, each with its own address on the bridge's /24. Anything
started through :meth:`Host.argv` runs in that namespace and sees the others only over the
bridge, so a partition can separate *some* hosts and not others: :meth:`Network.cut` drops
all traffic between two hosts, :meth:`Network.isolate` drops a host's traffic to everyone
(optionally keeping etcd or the test process reachable), :meth:`Network.heal` undoes both.
Rules are iptables DROP rules inside the namespaces: established connections hang, exactly
as in a real partition (no reset, no refusal), until a timeout on either side notices.

The root namespace has two addresses on the bridge: :attr:`Network.gateway` (``.1``, the
source of every connection the test process opens) and :attr:`Network.etcd_address`
(``.254``, where ``EtcdCluster(host=...)`` listens), so "cut from etcd" and "cut from the
test" are separate choices.

Every name this module makes (namespaces, the bridge, veths) starts with ``pgco<index>``;
the bridge's alias records the owning process. Making a Network first deletes what a dead
owner left behind (a killed test run), and picks a free index under a lock, so concurrent
test processes get disjoint subnets (``10.77.<index>.0/24``). Needs root, ``ip``,
``iptables-restore``, ``setpriv`` and ``sysctl``; :func:`unavailable` says what is missing.

Each namespace sees its own ``/etc/hosts`` (every host by name, ``etcd``, ``gateway``) and a
``resolv.conf`` with no nameserver, bind-mounted by ``ip netns exec`` from ``/etc/netns/NS/``:
the machine's DNS server is unreachable from a namespace, and a lookup that waits for it (a
reverse lookup of a listening address, as Python's HTTPServer does) would hang for seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "pgco"
LOCK = "/run/pgcohort-netns.lock"
SUPERNET = "10.77"  # 10.77.<index>.0/24 per Network
IP = shutil.which("ip") or "/usr/sbin/ip"
IPTABLES_RESTORE = shutil.which("iptables-restore") or "/usr/sbin/iptables-restore"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
SYSCTL = shutil.which("sysctl") or "/usr/sbin/sysctl"
DEVICE = "eth0"  # each namespace's end of its veth
ETC = "/etc/netns"  # ip netns exec bind-mounts /etc/netns/NS/FILE over /etc/FILE
# No nameserver: the resolver tries 127.0.0.1 inside the namespace and fails at once.
RESOLV_CONF = "# pgcohort test network: no DNS; names are in /etc/hosts\noptions timeout:1 attempts:1\n"

_NAME = re.compile(rf"^{PREFIX}(\d+)(?:br|v\d+|-.+)$")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, a tool missing), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in (IP, IPTABLES_RESTORE, SETPRIV, SYSCTL):
        if not os.path.exists(tool):
            return f"{tool} is missing"
    return None


def _run(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): with the pid, who it is."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_tag() -> str:
    return f"pgcohort-netns pid={os.getpid()} start={_start_time(os.getpid())}"


def _owner_alive(alias: str) -> bool:
    fields = dict(part.split("=", 1) for part in alias.split() if "=" in part)
    try:
        pid = int(fields.get("pid", ""))
    except ValueError:
        return False
    return _start_time(pid) == fields.get("start")


def _remove(doomed: Callable[[int], bool]) -> None:
    """Delete the namespaces, then the links (veths a lingering process keeps, bridges) of the doomed indexes."""
    for ns in (line.split()[0] for line in _run(IP, "netns", "list").splitlines() if line.strip()):
        if (m := _NAME.match(ns)) and doomed(int(m.group(1))):
            with contextlib.suppress(RuntimeError):
                _run(IP, "netns", "delete", ns)
    for link in json.loads(_run(IP, "-j", "link", "show") or "[]"):
        name = link.get("ifname", "")
        if (m := _NAME.match(name)) and doomed(int(m.group(1))):
            with contextlib.suppress(RuntimeError):  # a veth goes with its namespace's end
                _run(IP, "link", "delete", name)
    for ns in os.listdir(ETC) if os.path.isdir(ETC) else []:
        if (m := _NAME.match(ns)) and doomed(int(m.group(1))):
            shutil.rmtree(os.path.join(ETC, ns), ignore_errors=True)


@dataclass(frozen=True)
class Host:
    """One namespace on the network: its own ``lo``, one address, a default route via the bridge."""

    name: str
    namespace: str
    address: str
    subnet: str  # the network's CIDR, e.g. for pg_hba

    def argv(self, cmd: list[str], *, user: str | int | None = None) -> list[str]:
        """``cmd`` to run inside this namespace (as ``user``, groups cleared, when given), for Popen or run.

        ``ip netns exec`` and ``setpriv`` both exec in place, so the spawned PID *is* ``cmd``'s
        process: SIGSTOP and SIGKILL to ``Popen.pid`` hit it. Do not pass ``user=`` to Popen:
        entering a namespace needs root, so the switch happens here, after entering.
        """
        argv = [IP, "netns", "exec", self.namespace]
        if user is not None:
            pw = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
            argv += [SETPRIV, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
        return argv + cmd

    def run(
        self, cmd: list[str], *, user: str | int | None = None, timeout: float = 30.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace and wait for it (output captured, never raises on failure)."""
        return subprocess.run(self.argv(cmd, user=user), capture_output=True, text=True, timeout=timeout, env=env)

    def can_connect(self, address: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from inside this namespace to ``address:port`` completes within ``timeout``."""
        probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout={timeout}).close()"
        return self.run([sys.executable, "-c", probe], timeout=timeout + 10).returncode == 0

    def pids(self) -> list[int]:
        """The processes running in this namespace now."""
        return [int(p) for p in _run(IP, "netns", "pids", self.namespace).split()]

    def contains(self, pid: int) -> bool:
        """Whether process ``pid`` runs in this host's network namespace."""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{self.namespace}").st_ino
        except OSError:
            return False


class Network:
    """A bridge with namespaced hosts on it, and the partitions between them (see the module's docstring).

    ``tcp_syn_retries`` (per namespace) bounds how long a connect to a cut peer hangs: 2 gives up
    after 7 s instead of the kernel's 127 s, so a client that retries (a WAL receiver) reaches a
    healed peer within seconds rather than at its next SYN retransmission, up to a minute later.
    None keeps the kernel's default.
    """

    def __init__(self, *, tcp_syn_retries: int | None = None) -> None:
        self.tcp_syn_retries = tcp_syn_retries
        self.hosts: dict[str, Host] = {}
        self._cuts: set[frozenset[str]] = set()
        self._isolated: dict[str, tuple[bool, bool]] = {}  # name -> (keep_etcd, keep_observer)
        self._closed = False
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            live = self._sweep()
            self.index = self._free_index(live)
            self.bridge = f"{PREFIX}{self.index}br"
            atexit.register(self.close)
            _run(IP, "link", "add", self.bridge, "type", "bridge")
            _run(IP, "link", "set", "dev", self.bridge, "alias", _owner_tag())
        net = f"{SUPERNET}.{self.index}"
        self.subnet = f"{net}.0/24"
        self.gateway = f"{net}.1"
        self.etcd_address = f"{net}.254"
        _run(IP, "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run(IP, "addr", "add", f"{self.etcd_address}/32", "dev", self.bridge)
        _run(IP, "link", "set", "dev", self.bridge, "up")

    # --- set-up and clean-up ------------------------------------------------------------------

    @staticmethod
    def _sweep() -> set[int]:
        """Delete every ``pgco<index>`` namespace and link whose owner is gone; return the live indexes."""
        live = {
            int(m.group(1))
            for link in json.loads(_run(IP, "-j", "link", "show") or "[]")
            if (m := _NAME.match(link.get("ifname", ""))) and link["ifname"].endswith("br")
            if _owner_alive(link.get("ifalias", ""))
        }
        _remove(lambda index: index not in live)
        return live

    @staticmethod
    def _free_index(live: set[int]) -> int:
        """The lowest index no live Network uses whose /24 overlaps no address or route of this machine."""
        used = [
            ipaddress.ip_network(r["dst"], strict=False)
            for r in json.loads(_run(IP, "-j", "-4", "route", "show", "table", "all") or "[]")
            if r.get("dst") not in (None, "default")
        ]
        for a in json.loads(_run(IP, "-j", "-4", "addr", "show") or "[]"):
            used += [ipaddress.ip_network(f"{i['local']}/32") for i in a.get("addr_info", [])]
        for index in range(256):
            candidate = ipaddress.ip_network(f"{SUPERNET}.{index}.0/24")
            if index not in live and not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
                return index
        raise RuntimeError(f"no free /24 left in {SUPERNET}.0.0/16")

    def host(self, name: str) -> Host:
        """A new namespace ``name`` on the bridge, with the next address; it reaches every host and the root."""
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        n = len(self.hosts) + 2
        if n >= 254:
            raise RuntimeError("a Network holds at most 252 hosts")
        ns, veth = f"{PREFIX}{self.index}-{name}", f"{PREFIX}{self.index}v{n}"
        address = f"{SUPERNET}.{self.index}.{n}"
        _run(IP, "netns", "add", ns)
        os.makedirs(os.path.join(ETC, ns), exist_ok=True)
        with open(os.path.join(ETC, ns, "resolv.conf"), "w") as f:
            f.write(RESOLV_CONF)
        _run(IP, "link", "add", veth, "type", "veth", "peer", "name", DEVICE, "netns", ns)
        _run(IP, "link", "set", "dev", veth, "master", self.bridge, "up")
        _run(IP, "-n", ns, "link", "set", "dev", "lo", "up")
        _run(IP, "-n", ns, "addr", "add", f"{address}/24", "dev", DEVICE)
        _run(IP, "-n", ns, "link", "set", "dev", DEVICE, "up")
        _run(IP, "-n", ns, "route", "add", "default", "via", self.gateway)
        if self.tcp_syn_retries is not None:
            _run(IP, "netns", "exec", ns, SYSCTL, "-qw", f"net.ipv4.tcp_syn_retries={self.tcp_syn_retries}")
        host = Host(name, ns, address, self.subnet)
        self.hosts[name] = host
        self._write_hosts()
        return host

    def _write_hosts(self) -> None:
        """Every namespace's /etc/hosts names every host, etcd and the gateway (rewritten in place:
        the bind mounts of running processes see the new lines)."""
        lines = ["127.0.0.1 localhost", f"{self.gateway} gateway", f"{self.etcd_address} etcd"]
        lines += [f"{h.address} {h.name}" for h in self.hosts.values()]
        for h in self.hosts.values():
            with open(os.path.join(ETC, h.namespace, "hosts"), "w") as f:
                f.write("\n".join(lines) + "\n")

    def close(self) -> None:
        """Delete every namespace, veth and the bridge (idempotent; also run at exit)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        _remove(lambda index: index == self.index)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- partitions ---------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between hosts ``a`` and ``b``, both ways, established connections included."""
        if a == b or a not in self.hosts or b not in self.hosts:
            raise ValueError(f"cannot cut {a} from {b}")
        self._cuts.add(frozenset((a, b)))
        self._apply(a, b)

    def isolate(self, a: str, *, keep_etcd: bool = False, keep_observer: bool = False) -> None:
        """Drop every packet between host ``a`` and anything else: the other hosts, etcd, the root namespace.

        ``keep_etcd`` keeps :attr:`etcd_address` reachable, ``keep_observer`` keeps :attr:`gateway`
        (the test process) reachable. Processes inside ``a`` still reach each other over ``lo``
        and the host's own address.
        """
        if a not in self.hosts:
            raise ValueError(f"no host {a}")
        self._isolated[a] = (keep_etcd, keep_observer)
        self._apply(a)

    def heal(self) -> None:
        """Undo every cut and isolation."""
        touched = {n for pair in self._cuts for n in pair} | set(self._isolated)
        self._cuts.clear()
        self._isolated.clear()
        self._apply(*touched)

    def rules(self, name: str) -> str:
        """The iptables-restore input that makes host ``name``'s filter table match the partitions in force."""
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        for pair in sorted(sorted(p) for p in self._cuts if name in p):
            peer = self.hosts[next(n for n in pair if n != name)].address
            lines += [f"-A INPUT -s {peer}/32 -j DROP", f"-A OUTPUT -d {peer}/32 -j DROP"]
        if name in self._isolated:
            keep_etcd, keep_observer = self._isolated[name]
            kept = [a for a, keep in ((self.etcd_address, keep_etcd), (self.gateway, keep_observer)) if keep]
            for a in kept:
                lines += [f"-A INPUT -i {DEVICE} -s {a}/32 -j ACCEPT", f"-A OUTPUT -o {DEVICE} -d {a}/32 -j ACCEPT"]
            lines += [f"-A INPUT -i {DEVICE} -j DROP", f"-A OUTPUT -o {DEVICE} -j DROP"]
        return "\n".join([*lines, "COMMIT", ""])

    def _apply(self, *names: str) -> None:
        for name in sorted(set(names)):
            _run(IP, "netns", "exec", self.hosts[name].namespace, IPTABLES_RESTORE, "-w", stdin=self.rules(name))
