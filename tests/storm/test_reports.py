"""bench/storm.py's reports file: a long run split across sessions keeps every verdict and resumes where it stopped.

Pure apart from a temporary file: no server is started (the resumed run plays nothing).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

from bench import storm
from tests.storm.checker import History, Op, check
from tests.storm.run import Result
from tests.storm.schedule import generate


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
    stored = storm.stored_reports(path)
    assert [(d["setup"], d["seed"], d["commit"]) for d in stored] == [
        ("off", 7, "abc123 (clean)"),
        ("pgcohort", 7, "abc123 (clean)"),
    ]

    printed = storm.check_stored(path)
    assert printed.endswith("schedules per commit: abc123 (clean): 2"), printed
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[2:6] if line.strip()}
    assert rows["off"][1:3] == ["1", "49"] and rows["off"][4] == "1", rows  # one schedule, 49 writes, 1 lost
    assert rows["pgcohort"][4] == "0", rows

    def play(*_: object, **__: object) -> Result:
        raise AssertionError("a stored schedule was played again")

    monkeypatch.setattr(storm, "run_schedule", play)
    monkeypatch.setattr(sys, "argv", ["storm.py", "--seeds", "7", "--setups", "off,pgcohort", "--reports", path])
    assert storm.main() == 0
    out = capsys.readouterr().out
    assert out.count("already in") == 2, out
    assert len(storm.stored_reports(path)) == 2
