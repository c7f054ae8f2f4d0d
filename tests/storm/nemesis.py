"""The storm's nemesis: each fault event of a schedule done against a live cluster, and undone.

Partitions are real: every node runs in a network namespace of its own (tests/netns.py), and
:class:`Partitions` adds to :class:`tests.netns.Network` what overlapping faults need: a cut
(between two nodes, or between a node and etcd) is held by every fault that asked for it and
lifted only when the last of them ends, and a node can be cut from etcd alone. The test
process (the clients, the observer) is never cut: a partition separates servers, not clients.

Etcd lives in the root namespace on :attr:`Network.etcd_address`; its members talk to each
other over loopback, so etcd's own faults are kills and pauses of its members, and "a node cut
from etcd" drops that node's traffic to the etcd address.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.netns import DEVICE, Network
from tests.servers import EtcdCluster, EtcdMember

ETCD = "etcd"  # the name of etcd's side in a cut


class Partitions(Network):
    """A :class:`Network` whose cuts are counted (overlapping faults) and may name etcd as one side."""

    def __init__(self, *, tcp_syn_retries: int | None = None) -> None:
        super().__init__(tcp_syn_retries=tcp_syn_retries)
        self.held: Counter[frozenset[str]] = Counter()
        self._lock = threading.Lock()

    def hold(self, pairs: list[tuple[str, str]]) -> None:
        """Cut each pair (two hosts, or a host and :data:`ETCD`) until a matching :meth:`release`."""
        self._change(pairs, +1)

    def release(self, pairs: list[tuple[str, str]]) -> None:
        self._change(pairs, -1)

    def _change(self, pairs: list[tuple[str, str]], step: int) -> None:
        with self._lock:
            touched: set[str] = set()
            for a, b in pairs:
                key = frozenset((a, b))
                self.held[key] = max(0, self.held[key] + step)
                touched |= {a, b} - {ETCD}
            self.held = +self.held
            self._cuts = {p for p in self.held if ETCD not in p}
            self._apply(*touched)

    def heal(self) -> None:
        with self._lock:
            self.held.clear()
            super().heal()
            self._apply(*self.hosts)

    def rules(self, name: str) -> str:
        """The base rules (cuts between hosts) plus a drop of etcd's address where ``name`` is cut from etcd."""
        base = super().rules(name)
        if frozenset((name, ETCD)) not in self.held:
            return base
        extra = [f"-A INPUT -i {DEVICE} -s {self.etcd_address}/32 -j DROP",
                 f"-A OUTPUT -o {DEVICE} -d {self.etcd_address}/32 -j DROP"]  # fmt: skip
        head, _, tail = base.rpartition("COMMIT")
        return head + "\n".join(extra) + "\nCOMMIT" + tail


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks): with the pid, who it is, so a reused pid is never signalled."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class Stopped:
    """A process SIGSTOPped by a fault, to SIGCONT when the fault ends (if it is still the same process)."""

    pid: int
    started: str | None

    @staticmethod
    def stop(pid: int) -> Stopped:
        s = Stopped(pid, start_time(pid))
        os.kill(pid, signal.SIGSTOP)
        return s

    def cont(self) -> None:
        if start_time(self.pid) == self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)


@dataclass
class Log:
    """What the nemesis did and when (seconds since the schedule began), for the replay's summary."""

    clock: Callable[[], float]
    lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, text: str) -> None:
        with self._lock:
            self.lines.append(f"t+{self.clock():6.1f}s  {text}")


def etcd_member(etcd: EtcdCluster, target: str) -> EtcdMember:
    """``etcd:I`` as a member (I modulo the cluster's size)."""
    return etcd.members[int(target.split(":")[1]) % len(etcd.members)]


def run_quietly(argv: list[str], timeout: float = 60.0, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command; its exit status and the last line of its output (never raises)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""
