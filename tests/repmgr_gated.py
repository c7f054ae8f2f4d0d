"""pgcohort beside a real repmgr cluster (tests/repmgr.py): etcd, a sidecar per node, the gate as repmgr's
``failover_validation_command``. For tests, the demo of docs/repmgr.md and bench/repmgr_failover.py.

Each node's home holds ``pgcohort.yml``, the one file its sidecar and its gate read (repmgrd runs the
command as ``postgres`` with its own small environment, in the node's home). The command is the same
on every node, as repmgr asks: a small wrapper, ``gate.sh %a``, that runs
``pgcohort gate --config pgcohort.yml --candidate NAME`` unchanged (its one stdout line reaches
repmgrd through the inherited pipe) and then appends when it started and ended and how it exited to
``gate-calls.log`` in the wrapper's directory, which is what the tests and the benchmark time.

The gate imports pgcohort from a world-readable copy of this checkout (or from ``PYTHONPATH`` as
given, as the mutation runner's scratch copy is): the ``postgres`` user cannot read every checkout.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import yaml

from pgcohort.store import EtcdStore
from tests.mutations.run import package_copy
from tests.pg import _pg_ids
from tests.repmgr import RepmgrCluster, RepmgrNode, Timings
from tests.servers import EtcdCluster, free_ports
from tests.stack import BIN, SidecarProcess

GATE = r"""#!/bin/sh
# failover_validation_command (tests/repmgr_gated.py): pgcohort's gate, timed. $1 = %a (the candidate's name)
start=$(date +%s.%N)
/usr/bin/env PYTHONPATH={pythonpath} {bin} gate --config pgcohort.yml --candidate "$1"
rc=$?
printf '%s\t%s\t%s\t%s\n' "$start" "$(date +%s.%N)" "$1" "$rc" >> {dir}/gate-calls.log
exit $rc
"""


@dataclass(frozen=True)
class GateCall:
    """One run of the gate by repmgrd: when (time.time()), on which candidate, its exit status."""

    started: float
    ended: float
    candidate: str
    status: int


@dataclass
class Gated:
    """A :class:`RepmgrCluster` whose repmgrd runs pgcohort's gate, with a pgcohort sidecar beside each node."""

    etcd: EtcdCluster
    cluster_name: str
    timings: Timings = field(default_factory=Timings)
    sidecars: dict[str, SidecarProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.repmgr = RepmgrCluster(timings=self.timings)
        root = self.repmgr.root
        self.pythonpath = os.environ.get("PYTHONPATH") or self._readable_copy(root)
        self.hook_dir = os.path.join(root, "gate")
        os.makedirs(self.hook_dir)
        with open(os.path.join(self.hook_dir, "gate.sh"), "w") as f:
            f.write(GATE.format(pythonpath=self.pythonpath, bin=BIN, dir=self.hook_dir))
        os.chmod(os.path.join(self.hook_dir, "gate.sh"), 0o755)
        os.chown(self.hook_dir, *_pg_ids())
        self.repmgr.validation_command = f"{self.hook_dir}/gate.sh %a"

    @staticmethod
    def _readable_copy(root: str) -> str:
        site = os.path.join(root, "site")
        package_copy(pathlib.Path(site))
        # Compiled as an installed package is (pip compiles at install): postgres cannot write __pycache__ here.
        subprocess.run([sys.executable, "-m", "compileall", "-q", site], check=True)
        subprocess.run(["chmod", "-R", "a+rX", site], check=True)
        return site

    # --- building ----------------------------------------------------------------------

    def build(self, names: Iterable[str], *, sidecars: bool = True, adopt: bool = True, policy: str = "any 1") -> None:
        """The first name primary, the others cloned from it and registered, repmgrd on each; then (``adopt``)
        a sidecar each and ``pgcohort init --from-repmgr``."""
        first, *rest = list(names)
        self.add_primary(first)
        for n in rest:
            self.add_standby(n, first)
        self.repmgr.start_all_repmgrd()
        if sidecars:
            for n in self.repmgr.nodes:
                self.start_sidecar(n)
        if adopt:
            self.pgcohort("init", "--from-repmgr", self.repmgr.nodes[first].dsn, "--policy", policy)

    def add_primary(self, name: str) -> RepmgrNode:
        node = self.repmgr.add_primary(name)
        self._write_config(node)
        return node

    def add_standby(self, name: str, upstream: str | None = None, **kw: Any) -> RepmgrNode:
        node = self.repmgr.add_standby(name, upstream, **kw)
        self._write_config(node)
        return node

    def config(self, node: RepmgrNode) -> dict[str, Any]:
        """The node's pgcohort.yml: what docs/repmgr.md tells a user to write, with the tests' ports."""
        (port,) = free_ports(1)
        return {
            "cluster": self.cluster_name,
            "etcd": {"endpoints": self.etcd.endpoints, "timeout": 1.0, "retry_for": 3.0},
            "node": {"name": node.name, "zone": node.location, "host": "127.0.0.1", "port": node.port},
            "postgres": {"dsn": node.dsn, "member_options": "user=postgres dbname=postgres connect_timeout=2"},
            "sidecar": {"listen": f"127.0.0.1:{port}", "interval": 0.5, "ttl": 3, "adapter": "repmgr"},
            "repmgr": {"dbname": "postgres", "config_file": node.conf_path},
        }

    def config_path(self, name: str) -> str:
        return os.path.join(self.repmgr.nodes[name].home, "pgcohort.yml")

    def _write_config(self, node: RepmgrNode) -> None:
        path = self.config_path(node.name)
        with open(path, "w") as f:
            yaml.safe_dump(self.config(node), f, sort_keys=False)
        os.chmod(path, 0o644)

    def _read_config(self, name: str) -> dict[str, Any]:
        with open(self.config_path(name)) as f:
            doc: dict[str, Any] = yaml.safe_load(f)
        return doc

    # --- pgcohort ------------------------------------------------------------------------

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGCOHORT_")}
        return {**env, "PGCOHORT_CONFIG": self.config_path(name), "PYTHONPATH": self.pythonpath}

    def start_sidecar(self, name: str) -> SidecarProcess:
        port = int(self._read_config(name)["sidecar"]["listen"].rsplit(":", 1)[1])
        car = SidecarProcess(name, port, os.path.join(self.repmgr.root, f"sidecar-{name}.log"), self.env(name))
        car.start()
        car.wait_http()
        self.sidecars[name] = car
        return car

    def stop_sidecar(self, name: str) -> None:
        car = self.sidecars.pop(name, None)
        if car is not None:
            car.kill()

    def pgcohort(self, *args: str, node: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The pgcohort CLI with ``node``'s configuration (default: the first node), as root."""
        name = node or next(iter(self.repmgr.nodes))
        env = {**self.env(name), "PGCOHORT_ACTOR": "test"}
        done = subprocess.run([BIN, *args], capture_output=True, text=True, env=env, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"pgcohort {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def store(self) -> EtcdStore:
        return EtcdStore(self.etcd.endpoints, self.cluster_name, timeout=2.0, retry_for=15.0)

    def gate_calls(self) -> list[GateCall]:
        try:
            with open(os.path.join(self.hook_dir, "gate-calls.log")) as f:
                rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return [GateCall(float(r[0]), float(r[1]), r[2], int(r[3])) for r in rows if len(r) == 4]

    # --- PostgreSQL --------------------------------------------------------------------------

    def setting(self, name: str) -> str | None:
        """``synchronous_standby_names`` as a new session on the node sees it (None if it does not answer)."""
        try:
            rows = self.repmgr.nodes[name].query("SHOW synchronous_standby_names")
        except psycopg.Error:
            return None
        return str(rows[0]["synchronous_standby_names"])

    def priority(self, name: str, on: str | None = None) -> int:
        rows = {r["node_name"]: r for r in self.repmgr.metadata(on)}
        return int(rows[name]["priority"])

    def wait(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        return self.repmgr.wait(what, check, timeout)

    def tails(self) -> str:
        out = [self.repmgr.tails()]
        for n, car in self.sidecars.items():
            with contextlib.suppress(OSError):
                out.append(f"--- sidecar {n}\n{car.log[-2000:]}")
        return "\n".join(out)

    def close(self) -> None:
        for name in list(self.sidecars):
            self.stop_sidecar(name)
        self.repmgr.close()


def kill_sidecars_with(g: Gated, name: str) -> float:
    """kill -9 of the node ``name`` as a machine: its sidecar, repmgrd and PostgreSQL. Returns the monotonic time."""
    g.stop_sidecar(name)
    return g.repmgr.kill(name)


def wait_writable(g: Gated, timeout: float = 60.0, *, not_: Iterable[str] = ()) -> tuple[str, float]:
    """The one writable primary other than ``not_`` and the monotonic time it was first seen writable."""
    name = g.repmgr.wait_primary(timeout, not_=not_)
    return name, time.monotonic()
