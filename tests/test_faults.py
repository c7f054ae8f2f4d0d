"""The fault suite in CI: seeded schedules, 0 acknowledged writes lost, counts printed.

`pytest --fault-schedules N` (or PGCOHORT_FAULT_SCHEDULES) runs more; `python
tests/faults.py --help` runs them outside pytest, and `--naive` with the unsafe orchestrator.
"""

from __future__ import annotations

import pytest

from tests.conftest import need_servers
from tests.faults import PHASES, Phase, Result, run_phase, run_schedule, summary
from tests.servers import EtcdCluster

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]


def test_no_acknowledged_write_is_lost(fault_schedules: int, capsys: pytest.CaptureFixture[str]) -> None:
    need_servers()
    etcd = EtcdCluster(3).start()
    results: list[Result] = []
    try:
        for seed in range(1, fault_schedules + 1):
            results.append(run_schedule(seed, etcd))
    finally:
        etcd.close()
        with capsys.disabled():
            print()
            for r in results:
                print("  " + r.line())
            print("  " + summary(results))
    assert len(results) == fault_schedules
    assert sum(r.acknowledged for r in results) > 0, "the writer never got an acknowledgement: the suite tested nothing"
    lost = [r for r in results if r.lost]
    assert not lost, "acknowledged writes lost:\n" + "\n".join(r.line() for r in lost)


def test_the_suite_sees_a_loss_on_the_naive_path() -> None:
    """Seed 204 cuts every standby but pg2, lets writes be acknowledged by pg2 alone, then
    loses pg2 and the primary. The naive orchestrator promotes a standby without those
    writes; the gate refuses (|E| - K + 1 members cannot be reached) and promotes no one."""
    need_servers()
    etcd = EtcdCluster(3).start()
    try:
        naive = run_schedule(204, etcd, naive=True)
        gated = run_schedule(204, etcd)
    finally:
        etcd.close()
    assert "only pg2 acks, then pg2 down" in naive.events
    assert naive.promoted and naive.lost > 0, f"the naive path lost nothing: {naive.line()}"
    assert gated.lost == 0 and gated.promoted is None and "refused" in gated.refused, gated.line()
    print(f"\n  naive: {naive.line()}\n  gated: {gated.line()}")


@pytest.mark.parametrize("phase", PHASES, ids=[p.name for p in PHASES])
def test_a_failover_in_the_joint_phase_keeps_every_write(phase: Phase, etcd3: EtcdCluster) -> None:
    """The primary fails while a change is committed but not finalized. The gate must
    require |E| - K + 1 members of every active rule: it promotes when exactly that many
    are left, refuses with one fewer, and whatever it promotes holds every acknowledged write."""
    need_servers()
    r = run_phase(phase, etcd3)
    print(f"\n  {r.line()}")
    assert r.acknowledged > 0, "no write was acknowledged: the schedule tested nothing"
    assert r.lost == 0, f"acknowledged writes lost: {r.line()}"
    if phase.expect == "promote":
        assert r.promoted, f"the gate refused although every active rule had |E| - K + 1 members: {r.refused}"
    else:
        assert r.promoted is None, f"the gate promoted {r.promoted} without |E| - K + 1 members of every rule"
    if phase.outsider:
        assert f"two primaries, pg0 and {phase.outsider}" in r.refused, r.refused
