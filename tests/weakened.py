"""Today's rule beside the new one: a scratch copy of pgcohort with one weakening of tests/mutations/catalog.py.

A test that must show what a rule prevents runs the unsafe path through the mutation that
removes that rule, in a subprocess or a Patroni agent whose ``PYTHONPATH`` is the copy, and
the real code beside it; the mutation run (``python -m tests.mutations.run``) then shows the
same test failing when the real code is the weakened one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from tests.mutations.catalog import MUTATIONS
from tests.mutations.run import scratch_copy


@contextlib.contextmanager
def weakened(name: str) -> Iterator[str]:
    """Yield a world-readable ``PYTHONPATH`` whose ``pgcohort`` has mutation ``name`` applied."""
    (mutation,) = [m for m in MUTATIONS if m.name == name]
    where = pathlib.Path(tempfile.mkdtemp(prefix=f"pgcohort-weakened-{name}-"))
    try:
        scratch_copy(where, mutation)
        subprocess.run(["chmod", "-R", "a+rX", str(where)], check=True)
        os.chmod(where, 0o755)
        yield str(where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
