"""Runs the scenario files in tests/scenarios/ (like raft's quorum/testdata).

Each block is a command, a line ``----`` and the expected output, ended by a blank line.
State (the ruleset and the primary) carries through a file. Commands::

    init primary=P policy=any K|cross-zone members=NAME[/ZONE],...
    add NAME[/ZONE] | remove NAME | policy POLICY | finalize
    render                      the primary's synchronous_standby_names
    failover old=P survey=NAME:LSN,... [candidate=NAME]
    decode JSON                 parse a ruleset record

``PGCOHORT_REWRITE=1 pytest tests/test_scenarios.py`` rewrites the expected outputs.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

from pgcohort.core import failover
from pgcohort.core import ruleset as core
from pgcohort.core.rules import Member, Rule, parse_policy
from pgcohort.errors import PgcohortError

HERE = pathlib.Path(__file__).parent / "scenarios"
FILES = sorted(HERE.glob("*.txt"))


class Interpreter:
    def __init__(self) -> None:
        self.rs: core.Ruleset | None = None
        self.primary = ""

    def run(self, command: str) -> str:
        try:
            return self._run(command)
        except PgcohortError as e:
            return f"error ({type(e).__name__}): {e}"

    def _args(self, text: str) -> dict[str, str]:
        return {m[1]: m[2] for m in re.finditer(r"(\w+)=((?:any \d+)|\S+)", text)}

    @staticmethod
    def _member(spec: str) -> Member:
        name, _, zone = spec.partition("/")
        return Member(name, zone=zone or "default")

    def _run(self, command: str) -> str:
        verb, _, rest = command.partition(" ")
        if verb == "init":
            a = self._args(rest)
            rule = Rule(parse_policy(a["policy"]), tuple(self._member(s) for s in a["members"].split(",")))
            self.primary = a["primary"]
            self.rs = core.initial(rule, self.primary, changed_by="t", now="")
            return self._show()
        if verb == "decode":
            rs = core.decode(rest.encode(), "ruleset")
            return rs.show()
        assert self.rs is not None, "init first"
        if verb in ("add", "remove", "policy"):
            change: core.Change
            if verb == "add":
                change = core.AddMember(self._member(rest.strip()))
            elif verb == "remove":
                change = core.RemoveMember(rest.strip())
            else:
                change = core.SetPolicy(parse_policy(rest))
            self.rs = core.propose(self.rs, change, self.primary, changed_by="t", now="")
            return self._show()
        if verb == "finalize":
            self.rs = core.finalize(self.rs, changed_by="t", now="")
            return self._show()
        if verb == "render":
            return self.rs.rule.render(self.primary)
        if verb == "failover":
            a = self._args(rest)
            survey = {}
            for item in filter(None, a.get("survey", "").split(",")):
                name, lsn = item.split(":")
                survey[name] = failover.parse_lsn(lsn)
            return str(failover.decide(self.rs, a["old"], survey, a.get("candidate")))
        raise ValueError(f"unknown command {command!r}")

    def _show(self) -> str:
        assert self.rs is not None
        core.check_invariants(self.rs, self.primary)
        return f"v{self.rs.version} {self.rs.phase}: {self.rs.show()}"


def parse(text: str) -> list[tuple[str, str]]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].startswith("#"):
            i += 1
            continue
        command = lines[i]
        assert lines[i + 1] == "----", f"line {i + 2}: expected ----"
        i += 2
        out = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        blocks.append((command, "\n".join(out)))
    return blocks


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_scenario(path: pathlib.Path) -> None:
    text = path.read_text()
    interp = Interpreter()
    results = [(cmd, interp.run(cmd), want) for cmd, want in parse(text)]
    if os.environ.get("PGCOHORT_REWRITE"):
        header = [line for line in text.splitlines() if line.startswith("#")]
        body = "\n\n".join(f"{cmd}\n----\n{got}" for cmd, got, _ in results)
        path.write_text("\n".join(header) + ("\n\n" if header else "") + body + "\n")
        return
    for cmd, got, want in results:
        assert got == want, f"{path.name}: {cmd}\n--- got ---\n{got}\n--- want ---\n{want}"


def test_record_roundtrip() -> None:
    interp = Interpreter()
    interp.run("init primary=a policy=any 1 members=a/x,b/y,c/y")
    interp.run("add d/x")
    assert interp.rs is not None
    assert core.decode(core.encode(interp.rs), "k") == interp.rs
    assert json.loads(core.encode(interp.rs))["phase"] == "joint"
