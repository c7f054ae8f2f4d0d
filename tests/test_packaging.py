"""The distribution installs one import name, and the import contracts catch what they promise to.

``pip install`` of this checkout must put exactly one top-level package, ``pgcohort``, in
site-packages (beside Patroni, a top-level ``adapters`` or ``plugin`` would collide), merged
from the two source roots ``plugin/pgcohort`` and ``adapters/pgcohort``. The
contracts in pyproject.toml check every module: a forbidden import in a *new* module,
injected into a scratch copy, must break them.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from pgcohort.version import __version__
from tests.mutations.run import package_copy

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def test_install_puts_one_package_named_pgcohort(tmp_path: pathlib.Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), "."],
        cwd=_clone(tmp_path),
        check=True,
        capture_output=True,
    )
    top = sorted(p.name for p in site.iterdir() if p.name != "bin")
    assert top == ["pgcohort", f"pgcohort-{__version__}.dist-info"], top
    installed = {str(p.relative_to(site / "pgcohort")) for p in (site / "pgcohort").rglob("*.py")}
    assert {"adapters/postgres.py", "core/failover.py", "store/watch.py", "seams.py", "cli.py"} <= installed
    assert (site / "pgcohort" / "py.typed").exists()
    entry = (site / f"pgcohort-{__version__}.dist-info" / "entry_points.txt").read_text()
    assert "pgcohort = pgcohort.cli:main" in entry
    # The installed copy works on its own, from anywhere (no checkout on the path).
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", "import pgcohort.adapters.postgres as p, pgcohort.cli; print(p.__file__)"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.startswith(str(site))


def _clone(tmp_path: pathlib.Path) -> pathlib.Path:
    """A fresh clone of the committed tree plus the working tree's changes (what `pip install .` sees)."""
    clone = tmp_path / "clone"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src, dst = ROOT / name, clone / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return clone


INJECTIONS = {
    "etcd3gw outside the store": ("pgcohort/probe.py", "import etcd3gw\n", "Only the store imports etcd3gw"),
    "psycopg in the gate's layer": ("pgcohort/probe.py", "import psycopg\n", "Only the PostgreSQL layer"),
    "prometheus_client in a new module": ("pgcohort/probe.py", "import prometheus_client\n", "Only the metrics"),
    "Patroni's REST API outside its adapter": (
        "pgcohort/probe.py",
        "import urllib.request\n",
        "Only the Patroni adapter and the store",
    ),
    "a clock in the core": ("pgcohort/core/probe.py", "import time\n", "The core is pure"),
    "randomness in the core": ("pgcohort/core/probe.py", "import random\n", "The core is pure"),
    "the core importing the store": ("pgcohort/core/probe.py", "import pgcohort.store\n", "Layers"),
    "the sidecar importing the CLI": ("pgcohort/sidecar_probe.py", "import pgcohort.cli\n", None),
}


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_contracts_fail_on_a_forbidden_import_in_a_new_module(tmp_path: pathlib.Path, case: str) -> None:
    path, source, contract = INJECTIONS[case]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", scratch)
    package_copy(scratch)
    clean = _lint(scratch)
    assert clean.returncode == 0, clean.stdout[-2000:]
    (scratch / path).write_text(source)
    if case == "the sidecar importing the CLI":
        loop = scratch / "pgcohort" / "sidecar" / "loop.py"
        loop.write_text(loop.read_text() + "\nimport pgcohort.cli  # noqa\n")
    broken = _lint(scratch)
    assert broken.returncode != 0, f"{case}: the contracts did not notice\n{broken.stdout[-2000:]}"
    assert "BROKEN" in broken.stdout
    if contract:
        broken_lines = [line for line in broken.stdout.splitlines() if line.endswith("BROKEN")]
        assert any(line.startswith(contract) for line in broken_lines), broken_lines


def _lint(where: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the scratch copy alone: the editable install's roots (this checkout's plugin/ and
    adapters/, from a .pth file) are dropped from sys.path, or the namespace package ``pgcohort`` would have
    two portions of every module and the contracts would see whichever came first."""
    own = [str(ROOT / "plugin"), str(ROOT / "adapters")]
    code = (
        f"import sys; sys.path[:] = [p for p in sys.path if p not in {own!r}]; "
        "from importlinter.cli import lint_imports_command; sys.argv = ['lint-imports', '--no-cache']; "
        "lint_imports_command()"
    )
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([sys.executable, "-c", code], cwd=where, env=env, capture_output=True, text=True, timeout=120)
