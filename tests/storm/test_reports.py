"""bench/storm.py's reports file: a long run split across sessions keeps every verdict and resumes where it stopped.

Pure apart from a temporary file: no server is started (the resumed run plays nothing).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

from bench import storm
from tests.storm.checker import History, Op, check
from tests.storm.run import Result, Setup
from tests.storm.schedule import Schedule, generate


def result(setup: str, seed: int, *, lose: bool) -> Result:
    ops = tuple(Op(i, "w", "pg0", i * 0.1, i * 0.1 + 0.01, "ok", 1) for i in range(1, 50))
    read = frozenset(o.id for o in ops if not (lose and o.id == 7))
    history = History(ops, 0.0, 5.0, read, "pg0")
    return Result(setup, generate(seed, 45.0), history, check(history), [], [], 12.0, 3.0, 64.0)


def test_a_reports_file_keeps_each_verdict_and_a_resumed_run_plays_nothing_twice(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "run.jsonl")
    storm.store_report(path, result("off", 7, lose=True), "abc123 (clean)")
    storm.store_report(path, result("pgcohort", 7, lose=False), "abc123 (clean)")
    storm.store_error(path, "quorum", generate(7, 45.0), "abc123 (clean)", "AssertionError: timed out")
    stored = storm.stored_reports(path)
    assert [(d["setup"], d["seed"], "report" in d) for d in stored] == [
        ("off", 7, True), ("pgcohort", 7, True), ("quorum", 7, False)
    ]  # fmt: skip

    def rows(printed: str) -> dict[str, list[str]]:
        return {line.split()[0]: line.split() for line in printed.splitlines()[2:6] if line.strip() and line[0] != "a"}

    printed = storm.check_stored(path)
    assert printed.endswith("schedules per commit: abc123 (clean): 2"), printed
    assert rows(printed)["off"][1:3] == ["1", "49"] and rows(printed)["off"][4] == "1", printed  # 49 writes, 1 lost
    assert rows(printed)["pgcohort"][4] == "0" and rows(printed)["quorum"][1] == "0", printed
    assert rows(printed)["quorum"][-1] == "1", printed  # the harness error, counted apart

    played: list[tuple[str, int]] = []

    def play(schedule: Schedule, setup: Setup, **_: object) -> Result:
        played.append((setup.name, schedule.seed))
        return result(setup.name, schedule.seed, lose=False)

    monkeypatch.setattr(storm, "run_schedule", play)
    monkeypatch.setattr(sys, "argv", ["storm.py", "--seeds", "7", "--setups", "off,quorum,pgcohort", "--reports", path])
    assert storm.main() == 0
    out = capsys.readouterr().out
    assert played == [("quorum", 7)] and out.count("already in") == 2, out
    printed = storm.check_stored(path)
    assert rows(printed)["quorum"][1] == "1" and rows(printed)["quorum"][-1] == "0", printed
    assert printed.endswith("; harness errors played again later: 1"), printed
