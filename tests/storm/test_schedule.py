"""The storm's schedule generator: a pure function of the seed, within its bounds, using its whole vocabulary."""

from __future__ import annotations

import pytest

from tests.storm.schedule import KINDS, PRIMARY_FAULTS, Event, Schedule, generate

SEEDS = range(1, 301)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert generate(7) == generate(7)
    assert generate(7).describe() == generate(7).describe()
    assert generate(7) != generate(8)
    assert len({generate(s) for s in SEEDS}) == len(SEEDS)


def test_the_schedule_of_seed_7_does_not_drift() -> None:
    """The docs and the CI test name seeds: a change to the generator must bump its VERSION (and this text)."""
    assert generate(7).describe() == "\n".join([
        "schedule seed 7 (generator v1): 5 events in 45s",
        "  t+  8.7s  pause-agent replica:0, undone after 28.9s",
        "  t+  9.1s  pause-agent primary, undone at the heal",
        "  t+ 12.7s  pause-walreceiver replica:2, undone after 2.9s",
        "  t+ 22.4s  pause-agent replica:2, undone after 6.5s",
        "  t+ 37.1s  kill -9 primary (PostgreSQL), Patroni restarts it",
        "  t+ 45.0s  heal",
    ])  # fmt: skip


@pytest.mark.parametrize("length", [30.0, 45.0, 90.0])
def test_events_are_sorted_within_bounds_and_one_hits_the_primary_early(length: float) -> None:
    for seed in SEEDS:
        s = generate(seed, length)
        assert 3 <= len(s.events) <= 6
        assert [e.at for e in s.events] == sorted(e.at for e in s.events)
        assert all(2.0 <= e.at <= length - 6.0 for e in s.events)
        assert all(e.hold is None or e.hold > 0 for e in s.events)
        assert any(e.kind in PRIMARY_FAULTS and e.at <= length - 25.0 for e in s.events), s.describe()
        assert all(e.kind in KINDS for e in s.events)


def test_every_kind_of_fault_and_every_variant_occurs() -> None:
    events = [e for seed in SEEDS for e in generate(seed).events]
    assert {e.kind for e in events} == set(KINDS)
    assert {e.what for e in events if e.kind == "kill"} == {"agent", "postgres", "both"}
    assert {e.target for e in events if e.kind == "pause-agent"} >= {"primary", "replica:0", "replica:1", "replica:2"}
    assert any(e.hold is None for e in events) and any(e.hold is not None and e.hold > 20 for e in events)
    assert {e.etcd for e in events if e.kind == "cut-primary"} == {True, False}
    assert {e.what for e in events if e.kind == "split-zones"} == {"a", "b"}


def test_every_event_describes_itself() -> None:
    for seed in SEEDS:
        s = generate(seed)
        text = s.describe()
        assert text.startswith(f"schedule seed {seed} ") and text.endswith("heal")
        assert len(text.splitlines()) == len(s.events) + 2


def test_too_short_a_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 30"):
        generate(1, 20.0)


def test_a_schedule_is_a_value() -> None:
    e = Event(1.0, "kill", "primary", None, what="both")
    assert Schedule(1, 45.0, (e,)) == Schedule(1, 45.0, (Event(1.0, "kill", "primary", None, what="both"),))
    assert "kill -9 primary (agent+postgres), back at the heal" in e.describe()
