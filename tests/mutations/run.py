"""Apply each weakening of tests/mutations/catalog.py to a scratch copy and show a test catches it.

For each mutation: make a scratch checkout (``plugin/`` and ``adapters/`` laid out as a real
``pgcohort`` package, plus ``tests/``, ``dashboards/`` and ``pyproject.toml``), apply the
patch, and run the tests it names from that checkout with it first on ``PYTHONPATH``, so
the test process and every sidecar it spawns (the venv's ``pgcohort`` command) import the
weakened code, never the real checkout.
The run fails unless every mutation is caught. It prints a table: mutation, test, seconds.

    python -m tests.mutations.run [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from tests.mutations.catalog import MUTATIONS, Mutation

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def scratch_copy(where: pathlib.Path, mutation: Mutation) -> pathlib.Path:
    """The ``pgcohort`` package (plugin/ and adapters/ merged, as installed) with ``mutation`` applied."""
    package_copy(where)
    for extra in ("tests", "dashboards"):
        shutil.copytree(ROOT / extra, where / extra, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", where)
    rel = pathlib.Path(mutation.path)
    target = where / rel.relative_to(rel.parts[0])  # plugin/pgcohort/x -> pgcohort/x, adapters/pgcohort/... likewise
    text = target.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"mutation {mutation.name}: its target text is not found once in {mutation.path}; update it")
    target.write_text(text.replace(mutation.old, mutation.new))
    return where


def package_copy(where: pathlib.Path) -> pathlib.Path:
    """Copy the ``pgcohort`` package into ``where`` (a ``PYTHONPATH`` entry): both source roots in one folder."""
    for root in ("plugin", "adapters"):
        shutil.copytree(ROOT / root, where, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return where


def run_one(mutation: Mutation) -> tuple[bool, str, str, float]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"pgcohort-mutation-{mutation.name}-") as tmp:
        site = scratch_copy(pathlib.Path(tmp), mutation)
        os.chmod(tmp, 0o755)  # sidecars and hooks may run as other users
        env = {**os.environ, "PYTHONPATH": str(site), "PGCOHORT_MUTATION": mutation.name}
        where = subprocess.run(
            [sys.executable, "-c", "import pgcohort.adapters.postgres as p; print(p.__file__)"],
            cwd=site,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if not where.startswith(str(site)):
            raise SystemExit(f"mutation {mutation.name}: the scratch copy is not what gets imported ({where})")
        for test in mutation.tests:
            out = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", test],
                cwd=site,
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode == 1:  # a test failed: caught
                why = next((line[1:].strip() for line in out.stdout.splitlines() if line.startswith("E ")), "")
                return True, test, why[:110], time.monotonic() - started
            if out.returncode != 0:
                print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
                raise SystemExit(f"mutation {mutation.name}: {test} could not run (pytest exit {out.returncode})")
    return False, "", "", time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="run only these mutations")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    rows, escaped = [], []
    for m in chosen:
        caught, test, why, seconds = run_one(m)
        rows.append((m.name, test if caught else "NOT CAUGHT", f"{seconds:.0f}"))
        print(f"  {m.name:<26} {rows[-1][1]:<100} {rows[-1][2]:>4}s", flush=True)
        if why:
            print(f"  {'':<26}   {why}", flush=True)
        if not caught:
            escaped.append(m)
    print(f"mutations: {len(chosen)}, caught: {len(chosen) - len(escaped)}, escaped: {len(escaped)}")
    for m in escaped:
        print(f"  ESCAPED {m.name}: breaks '{m.rule}', yet {', '.join(m.tests)} passed")
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
