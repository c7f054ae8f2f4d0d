"""The README's first command: the demo on Patroni runs to the end and tells the whole story."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import need
from tests.patroni import PATRONI, ROOT
from tests.pg import PG_BIN

pytestmark = [pytest.mark.patroni, pytest.mark.pg, pytest.mark.etcd, pytest.mark.slow]


def test_the_demo_tells_the_story_and_loses_nothing() -> None:
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCOHORT_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for expected in (
        "adopted Patroni scope 'demo'",  # 1. adoption
        "tags in Patroni: {'zone': 'zone-b', 'nofailover': True}",  # 2. not a member yet
        "committed version 2",  # 2. the add
        "pg2 is still a member",  # 3. a sidecar stopped with SIGTERM keeps its member
        "pg2: (sidecar down)",  # 3. down while two changes commit
        "pg2's pre_promote" if "pg2's pre_promote" in out else "pg1's pre_promote",  # 4. a veto, with its reason
        "behind pg3",
        "nobody was promoted",
        "0 lost",
        "a commit waits",  # 5. cross-zone
        "a primary in zone-a",
        "Term",  # 6. the term history
        "demo stopped",
    ):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out[-6000:]}"
    assert "lost" in out and " 1 lost" not in out
    last_seen = int(out.split("pg2 last saw revision ")[1].split()[0])
    views = [line for line in out.splitlines() if "GET /ruleset" in line and line.strip().startswith("pg2:")]
    assert views and f"revision {last_seen} " not in views[-1], views  # pg2 caught up after it came back
    assert "| gate@pg3 " in out, "the term history does not say the gate on pg3 decided term 2"
