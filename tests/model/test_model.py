"""The exhaustive model check in CI: every reachable state is safe, and every weakening is caught.

The bound (``tests.model.check.CI``): one client write, one change (add c, remove b, or any
2, each explored separately), one failover, one primary crash and one standby death, with
two orchestrators that each read up to two views (one for an add), so either may act on a
stale one; and, with no change, an orchestrator that may die between its term and its
promotion (a term whose primary never ran). Larger bounds:
``python -m tests.model.check --writes 2 ...``; figures in docs/PROTOCOL.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import pytest

from tests.model.check import CI, LIFT
from tests.model.protocol_model import Bound, Checker, Result

# Each weakening, the bound that exposes it, and what the counterexample must show.
WEAKENED = {
    "apply-before-commit": (CI["policy"], "which was never committed"),
    "finalize-without-barrier": (CI["remove"], "loses acknowledged write"),
    "term-without-revision-compare": (CI["add"], "loses acknowledged write"),
    "short-survey": (CI["remove"], "loses acknowledged write"),
    "joint-checks-new-rule-only": (CI["remove"], "loses acknowledged write"),
    "reference-unconfirmed-term": (CI["term"], "blocked"),
    "survey-without-fence": (CI["term"], "loses acknowledged write"),
    "lift-while-another-surveys": (LIFT, "loses acknowledged write"),
    "steer-then-allow": (CI["steer"], "two promotions in one term"),
}


def _explore(bound: Bound, weakenings: frozenset[str]) -> Result:
    return Checker(bound, weakenings).explore()


@pytest.fixture(scope="module")
def explored() -> Iterator[dict[str, Future[Result]]]:
    """Every exploration of this module, started at once on every core (each is CPU-bound and independent);
    the longest first, so the runs finish together."""
    jobs = {f"safe:{c}": (CI[c], frozenset[str]()) for c in ("policy", "remove", "add", "term", "steer")} | {
        f"weak:{w}": (bound, frozenset({w})) for w, (bound, _) in WEAKENED.items()
    }
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        yield {name: pool.submit(_explore, *job) for name, job in jobs.items()}


@pytest.mark.parametrize("change", sorted(CI))
def test_every_reachable_state_is_safe(change: str, explored: dict[str, Future[Result]]) -> None:
    result = explored[f"safe:{change}"].result()
    print(f"\n  {change} {CI[change]}: {result.show()}")
    assert result.violation is None, result.show()
    assert result.states > 10_000, "the model explored suspiciously little"


@pytest.mark.parametrize("weakening", sorted(WEAKENED))
def test_each_weakening_has_a_shortest_counterexample(weakening: str, explored: dict[str, Future[Result]]) -> None:
    _, expected = WEAKENED[weakening]
    result = explored[f"weak:{weakening}"].result()
    print(f"\n  {weakening}: {result.show()}")
    assert result.violation is not None, f"{weakening} was not found: the model does not protect this rule"
    assert expected in result.violation, result.show()
