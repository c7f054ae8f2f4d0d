"""The storm's checker on made-up histories: each figure it reports, and the cases it must not report."""

from __future__ import annotations

import json

import pytest

from tests.storm.checker import GAP, History, Op, availability, check, report_from_json, report_to_json, split_brains


def ok(i: int, node: str, start: float, end: float | None = None, timeline: int = 1, writer: str = "w") -> Op:
    return Op(i, writer, node, start, start + 0.01 if end is None else end, "ok", timeline)


def steady(first: int, node: str, start: float, stop: float, timeline: int = 1, every: float = 0.05) -> list[Op]:
    """Acknowledged writes every ``every`` seconds on one node, ids from ``first``."""
    ops, i, t = [], first, start
    while t < stop:
        ops.append(ok(i, node, t, t + 0.01, timeline))
        i, t = i + 1, t + every
    return ops


def test_a_clean_history_reports_nothing_wrong() -> None:
    ops = steady(1, "pg0", 0.0, 10.0)
    report = check(History(tuple(ops), 0.0, 10.0, frozenset(o.id for o in ops), "pg0"))
    assert report.safe
    assert report.acknowledged == report.attempted == len(ops)
    assert not (report.lost or report.unexpected or report.recovered or report.split_brain)
    assert report.availability == pytest.approx(1.0)
    assert report.unavailable == 0.0


def test_an_acknowledged_write_missing_from_the_final_read_is_lost() -> None:
    ops = steady(1, "pg0", 0.0, 5.0)
    read = frozenset(o.id for o in ops) - {7, 8}
    report = check(History(tuple(ops), 0.0, 5.0, read, "pg1"))
    assert report.lost == (7, 8)
    assert not report.safe


def test_a_read_id_never_attempted_is_unexpected() -> None:
    ops = steady(1, "pg0", 0.0, 2.0)
    read = frozenset(o.id for o in ops) | {999}
    report = check(History(tuple(ops), 0.0, 2.0, read, "pg0"))
    assert report.unexpected == (999,)
    assert not report.lost and not report.safe


def test_a_read_write_that_was_not_acknowledged_is_recovered_not_lost() -> None:
    ops = [ok(1, "pg0", 0.0), Op(2, "w", "pg0", 0.1, 2.1, "info", note="timed out"), ok(3, "pg0", 2.2)]
    report = check(History(tuple(ops), 0.0, 3.0, frozenset({1, 2, 3}), "pg0"))
    assert report.recovered == (2,)
    assert report.unknown == 1 and report.acknowledged == 2
    assert report.safe  # a write the client never counted on may land


def test_a_unknown_write_that_did_not_land_is_nothing() -> None:
    ops = [ok(1, "pg0", 0.0), Op(2, "w", "pg0", 0.1, 2.1, "info")]
    report = check(History(tuple(ops), 0.0, 3.0, frozenset({1}), "pg0"))
    assert not (report.lost or report.recovered) and report.safe


def test_a_certainly_failed_write_that_was_read_is_flagged_as_a_writer_bug() -> None:
    ops = [ok(1, "pg0", 0.0), Op(2, "w", "pg0", 0.1, 0.2, "fail", note="connection refused")]
    report = check(History(tuple(ops), 0.0, 1.0, frozenset({1, 2}), "pg0"))
    assert report.recovered == (2,) and report.failed_but_read == (2,)


def test_without_a_final_read_nothing_can_be_said_about_losses() -> None:
    ops = steady(1, "pg0", 0.0, 1.0)
    report = check(History(tuple(ops), 0.0, 1.0, None))
    assert not report.final_read and not report.lost and not report.safe


def test_availability_counts_buckets_with_an_acknowledgement_and_gaps_over_a_second() -> None:
    # writes for 4 s, nothing for 3 s (no primary), writes for 3 s
    ops = steady(1, "pg0", 0.0, 4.0) + steady(1000, "pg1", 7.0, 10.0, timeline=2)
    report = check(History(tuple(ops), 0.0, 10.0, frozenset(o.id for o in ops), "pg1"))
    assert report.availability == pytest.approx(0.7, abs=0.02)
    assert report.unavailable == pytest.approx(3.0, abs=0.1)
    assert report.longest_gap == pytest.approx(3.0, abs=0.1)
    assert not report.split_brain  # one after the other: a failover, not a split brain


def test_short_gaps_are_not_unavailability_and_the_tail_counts() -> None:
    ops = [ok(i, "pg0", i * 0.5) for i in range(8)]  # every 0.5 s until 3.5 s, then nothing until 10 s
    report = check(History(tuple(ops), 0.0, 10.0, frozenset(range(8)), "pg0"))
    assert report.unavailable == pytest.approx(10.0 - 3.51, abs=0.01)
    assert GAP == 1.0


def test_two_nodes_acknowledging_at_the_same_time_are_a_split_brain() -> None:
    old = steady(1, "pg0", 0.0, 8.0, timeline=1)  # a zombie keeps acknowledging until 8 s
    new = steady(1000, "pg1", 5.0, 10.0, timeline=2)  # the new primary from 5 s
    report = check(History(tuple(old + new), 0.0, 10.0, frozenset(o.id for o in new), "pg1"))
    (sb,) = report.split_brain
    assert (sb.first, sb.second) == (("pg0", 1), ("pg1", 2))
    assert sb.start == pytest.approx(5.0) and sb.end == pytest.approx(8.0, abs=0.05)
    assert sb.writes > 0 and "pg0 (timeline 1) and pg1 (timeline 2)" in sb.describe()
    assert report.lost and not report.safe


def test_one_write_of_the_old_primary_inside_the_new_ones_is_a_split_brain() -> None:
    new = [ok(10, "pg1", 5.0, 5.01, 2), ok(11, "pg1", 6.0, 6.01, 2)]
    late = ok(3, "pg0", 5.2, 5.3, 1)  # started after pg1's first returned, returned before pg1's next started
    assert len(split_brains([*new, late])) == 1


def test_overlapping_attempts_across_a_failover_are_not_a_split_brain() -> None:
    # The old primary's last write was sent before the new one's first returned: they may not overlap.
    old = [ok(1, "pg0", 0.0, 0.01), ok(2, "pg0", 4.9, 5.5)]
    new = [ok(3, "pg1", 5.0, 5.1, 2), ok(4, "pg1", 6.0, 6.01, 2)]
    assert split_brains(old + new) == ()


def test_a_node_promoted_again_on_a_new_timeline_is_not_a_split_brain_with_itself() -> None:
    first = steady(1, "pg0", 0.0, 3.0, timeline=1)
    middle = steady(100, "pg1", 4.0, 6.0, timeline=2)
    again = steady(200, "pg0", 7.0, 9.0, timeline=3)
    assert split_brains(first + middle + again) == ()


def test_ids_must_be_unique_and_outcomes_known() -> None:
    with pytest.raises(ValueError, match="twice"):
        check(History((ok(1, "pg0", 0.0), ok(1, "pg0", 1.0)), 0.0, 2.0, frozenset()))
    with pytest.raises(ValueError, match="outcome"):
        check(History((Op(1, "w", "pg0", 0.0, 0.1, "maybe"),), 0.0, 1.0, frozenset()))


def test_availability_ignores_acknowledgements_outside_the_window() -> None:
    assert availability([ok(1, "pg0", -1.0), ok(2, "pg0", 11.0)], 0.0, 10.0) == 0.0


def test_a_report_survives_a_line_of_a_reports_file() -> None:
    old = steady(1, "pg0", 0.0, 8.0, timeline=1)
    new = steady(1000, "pg1", 5.0, 10.0, timeline=2)
    info = Op(5000, "w", "pg1", 9.0, 9.5, "info", 2, "timed out")
    report = check(History((*old, *new, info), 0.0, 10.0, frozenset({o.id for o in new} | {5000, 9999}), "pg1"))
    assert report.lost and report.split_brain and report.recovered and report.unexpected
    assert report_from_json(json.loads(json.dumps(report_to_json(report)))) == report
