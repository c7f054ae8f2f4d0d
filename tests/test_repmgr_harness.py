"""The repmgr harness (tests/repmgr.py) on real repmgr 5.3 and repmgrd: the groundwork for the repmgr adapter.

* Three PostgreSQL 15 nodes registered with repmgr, one repmgrd each; kill -9 of the primary:
  repmgrd promotes a standby (through ``promote_command``) and the other follows it
  (``follow_command``), with the failover_validation_command stand-in allowing.
* The validation command vetoing once: the candidate's repmgrd reruns the election after
  ``election_rerun_interval`` and the failure detection, picks the same candidate again, and
  promotes it once the command exits 0. Printed: kill to writable primary without and with a
  veto, and what the veto cost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import need
from tests.repmgr import REPMGR, REPMGRD, RepmgrCluster, Timings, build, members_from_metadata

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def three() -> Iterator[RepmgrCluster]:
    need(REPMGR, "repmgr 5.3 (Debian's postgresql-15-repmgr)")
    need(REPMGRD, "repmgrd (Debian's postgresql-15-repmgr)")
    c = build(("pg0", "pg1", "pg2"), validation=True, events=True)
    yield c
    c.close()


@pytest.fixture
def four() -> Iterator[RepmgrCluster]:
    need(REPMGR, "repmgr 5.3 (Debian's postgresql-15-repmgr)")
    need(REPMGRD, "repmgrd (Debian's postgresql-15-repmgr)")
    c = build(("pg0", "pg1", "pg2", "pg3"), validation=True)
    yield c
    c.close()


def fail_over(c: RepmgrCluster, primary: str) -> tuple[str, float, float]:
    """kill -9 of ``primary`` (PostgreSQL and repmgrd): the new writable primary, the seconds it took,
    and the moment of the kill (time.monotonic())."""
    c.settle()  # no record half sent when the primary dies (see RepmgrCluster.settle)
    killed = c.kill(primary)
    new = c.wait_primary(60, not_=[primary])
    return new, time.monotonic() - killed, killed


def test_repmgrd_promotes_a_standby_when_the_primary_is_killed_and_the_other_follows(three: RepmgrCluster) -> None:
    c = three
    v, ev = c.validation, c.event_script
    assert v is not None and ev is not None
    status = c.repmgr("pg0", "service", "status").stdout
    assert all(f"| {n} " in status for n in ("pg0", "pg1", "pg2")), status
    assert status.count("running") >= 6, status  # PostgreSQL and repmgrd, on each node
    primary, members = members_from_metadata(c.metadata("pg1"))
    assert primary == "pg0"
    assert {(m["name"], m["port"], m["type"]) for m in members} == {
        (n, c.nodes[n].port, "primary" if n == "pg0" else "standby") for n in ("pg0", "pg1", "pg2")
    }

    new, took, killed = fail_over(c, "pg0")
    assert new in ("pg1", "pg2")
    other = "pg2" if new == "pg1" else "pg1"
    c.wait_following(other, new, 30)
    followed = time.monotonic() - killed

    calls = v.calls()
    assert [(x.verdict, x.args[1]) for x in calls] == [("allow", new)], calls
    node_id, name, visible, shared_upstream, total = calls[0].args
    assert (int(node_id), name) == (c.nodes[new].node_id, new)
    assert (visible, shared_upstream, total) == ("2", "2", "3")  # %v %u %t: itself + 1 sibling; 3 records

    c.wait_settled(new, 30)
    rows = {r["node_name"]: r for r in c.metadata(new)}
    assert (rows["pg0"]["active"], rows[new]["type"], rows[other]["upstream_node_id"]) == (
        False,
        "primary",
        c.nodes[new].node_id,
    )
    wanted = {"repmgrd_failover_promote", "repmgrd_failover_follow"}
    c.wait("the failover's events", lambda: wanted <= {e for _, e, ok in ev.events() if ok}, 15)
    delivered = ev.events()
    assert (c.nodes[new].node_id, "standby_promote", True) in delivered
    assert any(r["event"] == "repmgrd_failover_promote" for r in c.events(new))
    print(
        f"\n  kill -9 of pg0 -> {new} writable after {took:.2f} s ({c.timings.detection():.0f} s of it detection), "
        f"{other} streaming from it after {followed:.2f} s"
    )


def test_a_validation_command_exiting_1_vetoes_repmgrd_reruns_and_exit_0_lets_it_promote(four: RepmgrCluster) -> None:
    c = four
    v = c.validation
    assert v is not None

    # Without a veto: the yardstick.
    first, plain, _ = fail_over(c, "pg0")
    for n in set(c.nodes) - {"pg0", first}:
        c.wait_following(n, first, 30)
    c.wait_settled(first, 30)  # a second failure while repmgr still follows would be another test
    # A standby's repmgrd that started monitoring just before the kill can exit during the failover
    # ("unable to connect to primary node"); systemd's Restart= would start it again, and the second
    # failover needs every survivor's repmgrd to follow the winner.
    restarted = [n for n in sorted(set(c.nodes) - {"pg0"}) if not c.nodes[n].repmgrd_running]
    for n in restarted:
        c.start_repmgrd(n)
    if restarted:
        c.wait_settled(first, 30)
    assert [x.verdict for x in v.calls()] == ["allow"]

    # The next failover: the validation command vetoes once, then allows.
    v.veto_times(1)
    survivors = sorted(set(c.nodes) - {"pg0", first})
    second, vetoed, _ = fail_over(c, first)
    assert second in survivors
    calls = v.calls()[1:]
    assert [x.verdict for x in calls] == ["veto", "allow"], calls
    assert calls[0].args[1] == calls[1].args[1] == second, "repmgrd picked another candidate on the rerun"
    lines = c.nodes[second].log.splitlines()
    said = [
        i
        for needle in (
            "failover validation command returned a non-zero value: 1",
            "promotion candidate election will be rerun",
            f'rerunning election after {c.timings.election_rerun_interval} seconds ("election_rerun_interval")',
            "failover validation command returned zero",
            "this node is the winner",
        )
        for i in [next((k for k, line in enumerate(lines) if needle in line), -1)]
    ]
    assert -1 not in said and said == sorted(said), "\n".join(lines[-80:])
    (other,) = set(survivors) - {second}
    c.wait_following(other, second, 30)
    assert any(
        "received notification from promotion candidate to rerun election" in x for x in c.nodes[other].log.splitlines()
    )

    cost = calls[1].at - calls[0].at
    t = c.timings
    assert t.election_rerun_interval <= cost <= t.election_rerun_interval + t.detection() + 3, cost
    print(
        f"\n  kill -9 -> writable primary: {plain:.2f} s without a veto, {vetoed:.2f} s with one "
        f"(+{vetoed - plain:.2f} s)\n  one veto costs {cost:.2f} s from the vetoed call to the next one "
        f"(election_rerun_interval {t.election_rerun_interval} + detection {t.detection():.0f}); "
        f"with repmgr's defaults it would be {_veto_cost(Timings.repmgr_defaults()):.0f} s"
    )


def _veto_cost(t: Timings) -> float:
    return t.election_rerun_interval + t.detection()
