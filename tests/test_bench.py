"""The benchmarks still run and still print their targets (tiny sizes: a smoke test, not a measurement).

Figures come from full runs (docs/PERFORMANCE.md); these only keep `bench/` from rotting
between them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import need, need_servers
from tests.repmgr import REPMGRD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(name: str, *args: str) -> str:
    need_servers()
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("propagation", ("--rounds", "3", "--watchers", "2"), ["commit -> all watchers observed", "target <= 1.3x"]),
        (
            "fleet",
            ("--sizes", "2,4,8", "--seconds", "2", "--idle", "1", "--hosts", "3"),
            ["propagation p99", "changes seen by every watcher", "target <= 1.5x", "CPU per change"],
        ),
        ("apply", ("--rounds", "2", "--idle", "1"), ["add -> primary enforces", "watch", "finalize"]),
        (
            "repmgr_failover",
            ("--rounds", "1", "--veto-rounds", "1"),
            ["writable p50 ratio", "target <= 1.1x", "one veto costs p50"],
        ),
    ],
)
def test_a_bench_runs_and_prints_its_targets(name: str, args: tuple[str, ...], expected: list[str]) -> None:
    if name == "repmgr_failover":
        need(REPMGRD, "repmgrd (Debian's postgresql-15-repmgr)")
    out = bench(name, *args)
    for text in expected:
        assert text in out, out
    assert "changes not seen by all 3" not in out and "out of order, twice or not at all" not in out, out
