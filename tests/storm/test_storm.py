"""The fault storm's fixed set: pgcohort loses nothing where Patroni alone loses acknowledged writes.

Each case plays one seeded schedule (tests/storm/schedule.py) against a fresh cluster of one
setup -- a real 3-member etcd, four Patroni 4.1.5 nodes each in a network namespace of its
own -- with three writers, then heals everything and reads the ledger on the surviving primary
(tests/storm/run.py). :data:`SEEDS` are seeds whose schedules make Patroni alone lose writes:
seed 7 hangs the primary's agent (its PostgreSQL goes on) and, across the failover, the agent
of a standby that keeps streaming from it, so the old primary acknowledges writes through that
standby after the new one took over and the standby is rewound when its agent returns.

On each seed the pgcohort setups (``any 1`` and ``cross-zone``) must end with a final read,
nothing lost, nothing unexpected and no split brain, and Patroni with ``synchronous_mode: off``
must lose at least one acknowledged write on one of the seeds: the checker's proof that it sees
a loss. A failure prints the schedule, what the nemesis did and the writes per tenure; replay it
with ``python bench/storm.py --replay SEED --setup SETUP``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI, need
from tests.netns import unavailable
from tests.patroni import PATRONI
from tests.pg import PG_BIN
from tests.servers import ETCD
from tests.storm.run import SETUPS, Result, describe, run_schedule
from tests.storm.schedule import generate

pytestmark = [pytest.mark.patroni, pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]

SEEDS = (7,)
GATED = ("pgcohort", "cross-zone")
_results: dict[tuple[str, int], Result] = {}


@pytest.fixture(scope="module")
def storm() -> Iterator[dict[tuple[str, int], Result]]:
    why = unavailable()
    if why is not None:
        if IN_CI:
            pytest.fail(f"{why}, under CI=true: the storm must run")
        pytest.skip(why)
    need(PATRONI, "Patroni (bash scripts/setup installs it into the venv)")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    need(ETCD, "etcd-server")
    yield _results
    _results.clear()


def played(results: dict[tuple[str, int], Result], setup: str, seed: int) -> Result:
    """The result of ``seed`` on ``setup``, played once per test session."""
    if (setup, seed) not in results:
        results[(setup, seed)] = run_schedule(generate(seed), SETUPS[setup])
        print(f"\n  {results[(setup, seed)].summary()}")
    return results[(setup, seed)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("setup", GATED)
def test_pgcohort_loses_nothing_reads_nothing_unexpected_and_never_splits_its_brain(
    storm: dict[tuple[str, int], Result], setup: str, seed: int
) -> None:
    result = played(storm, setup, seed)
    r = result.report
    assert r.final_read, f"no primary took writes after the heal\n{describe(result)}"
    assert not r.lost, f"PRODUCT BUG: {setup} lost acknowledged writes on seed {seed}\n{describe(result)}"
    assert not r.unexpected, f"PRODUCT BUG: {setup} read writes never attempted on seed {seed}\n{describe(result)}"
    assert not r.split_brain, f"PRODUCT BUG: {setup} split its brain on seed {seed}\n{describe(result)}"
    assert not r.failed_but_read, f"the writer called a committed write failed\n{describe(result)}"
    assert r.acknowledged > 100, f"too few writes to show anything\n{describe(result)}"


def test_patroni_with_sync_off_loses_acknowledged_writes_on_the_same_schedules(
    storm: dict[tuple[str, int], Result],
) -> None:
    results = [played(storm, "off", seed) for seed in SEEDS]
    assert all(not r.report.failed_but_read for r in results), "\n\n".join(describe(r) for r in results)
    lossy = [r for r in results if r.report.lost]
    assert lossy, "Patroni alone lost nothing: the schedules did not reproduce a loss\n\n" + "\n\n".join(
        describe(r) for r in results
    )
    for r in lossy:
        print(f"\n  off, seed {r.schedule.seed}: {len(r.report.lost)} acknowledged writes lost "
              f"({len(r.report.split_brain)} split-brain windows)")  # fmt: skip
