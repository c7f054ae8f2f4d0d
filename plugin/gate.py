"""The failover gate: revoke and survey, decide, record the term, and only then promote.

1. Read the ruleset and the term in one linearizable read (revisions R and T).
2. **Revoke** every reachable member of every active cohort except the failed primary
   (it stops receiving WAL, so its position cannot grow behind the survey's back) and
   read its position.
3. Apply the failover rule (:func:`plugin.core.failover.decide`) to every active rule.
   A refusal says which rule, how many members were reached and how many more are needed.
4. Record the new term with one transaction that compares R and T. If the ruleset moved,
   this view was stale: re-read, survey again, decide again. If the term moved, another
   orchestrator decided first: stop, so that exactly one promotion happens.
5. Only after the term is committed is the candidate promoted (:func:`failover`); the
   gate alone (:func:`gate`) is what an HA manager's pre-promote hook calls.

The escape hatch ``allow_data_loss`` promotes the most advanced reachable eligible member
when the rule refuses; the term records the override (``forced``) and so does the term
history. It is never taken automatically.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from plugin.core import failover as rule
from plugin.core.rules import Member
from plugin.core.ruleset import Ruleset, Term
from plugin.errors import ConflictError, PgcohortError, RefusedError
from plugin.protocol import now
from plugin.store import EtcdStore, Revision


class Node(Protocol):
    """A member's PostgreSQL as the gate needs it (adapters.postgres.PostgresNode)."""

    def revoke(self, *, timeout: float = 10.0) -> int:
        """Stop receiving WAL from the old primary; return the final position (may raise)."""
        ...

    def promote(self, *, timeout: int = 60) -> None:
        """Promote and wait until it accepts writes."""
        ...

    def close(self) -> None: ...


Connect = Callable[[Member], Node]


@dataclass(frozen=True)
class Survey:
    positions: dict[str, int]  # revoked members and their final positions
    unreachable: dict[str, str]  # members that could not be revoked, and why


@dataclass(frozen=True)
class Outcome:
    decision: rule.FailoverDecision
    survey: Survey
    term: Term
    ruleset_revision: Revision
    term_revision: Revision
    attempts: int  # 1 unless a stale view had to be re-read
    member: Member  # the candidate as the committed ruleset describes it

    @property
    def candidate(self) -> str:
        assert self.decision.candidate is not None
        return self.decision.candidate


def survey(ruleset: Ruleset, old_primary: str, connect: Connect, *, timeout: float = 10.0) -> Survey:
    """Revoke every member of every active cohort but ``old_primary``, in parallel."""
    members: dict[str, Member] = {}
    for r in ruleset.active_rules():
        for m in r.cohort:
            if m.name != old_primary:
                members.setdefault(m.name, m)

    def revoke(m: Member) -> int:
        node = connect(m)
        try:
            return node.revoke(timeout=timeout)
        finally:
            node.close()

    positions, unreachable = {}, {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
        futures = {name: pool.submit(revoke, m) for name, m in members.items()}
        for name, fut in futures.items():
            try:
                positions[name] = fut.result(timeout=timeout + 5)
            except (PgcohortError, concurrent.futures.TimeoutError) as e:
                unreachable[name] = str(e) or type(e).__name__
    return Survey(positions, unreachable)


def gate(
    store: EtcdStore,
    connect: Connect,
    *,
    actor: str,
    writer: str,
    candidate: str | None = None,
    allow_data_loss: bool = False,
    attempts: int = 3,
    survey_timeout: float = 10.0,
) -> Outcome:
    """Survey, decide and record the new term. Raises RefusedError or ConflictError."""
    for attempt in range(1, attempts + 1):
        snap, term = store.read_both()
        old = term.term.primary
        if candidate == old:
            raise RefusedError(f"{candidate} is the current primary (term {term.term.term}); nothing to fail over")
        found = survey(snap.ruleset, old, connect, timeout=survey_timeout)
        decision = rule.decide(snap.ruleset, old, found.positions, candidate)
        forced = ""
        if not decision.allowed:
            unreachable = "; ".join(f"{n}: {why}" for n, why in sorted(found.unreachable.items()))
            if not allow_data_loss:
                raise RefusedError(
                    f"failover from {old} refused: {decision.reason}"
                    + (f" (unreachable: {unreachable})" if unreachable else "")
                    + f"\n{decision}\nNo term was written and nothing was promoted. Bring more members back,"
                    " or, accepting the loss of acknowledged writes, pass --allow-data-loss"
                )
            decision, forced = _forced(snap.ruleset, old, found, candidate, decision)
        new_term = Term(
            term.term.term + 1,
            decision.candidate or "",
            snap.revision,
            found.positions[decision.candidate or ""],
            actor,
            now(),
            writer,
            forced,
        )
        try:
            rev = store.put_term(snap.revision, term.revision, new_term)
        except ConflictError:
            now_term = store.read_term()
            if now_term.revision != term.revision:
                # Another orchestrator decided first: failing over again would promote twice.
                raise ConflictError(
                    f"term {now_term.term.term} (primary {now_term.term.primary}, decided by "
                    f"{now_term.term.decided_by}) was committed while this failover was surveying; "
                    "not failing over again. Nothing was promoted by this run"
                ) from None
            if attempt == attempts:
                raise
            continue  # the ruleset moved: this view was stale; read, survey and decide again
        member = next(m for r in snap.ruleset.active_rules() for m in r.cohort if m.name == new_term.primary)
        return Outcome(decision, found, new_term, snap.revision, rev, attempt, member)
    raise AssertionError("unreachable")


def _forced(
    ruleset: Ruleset, old: str, found: Survey, candidate: str | None, refused: rule.FailoverDecision
) -> tuple[rule.FailoverDecision, str]:
    eligible = {n: p for n, p in found.positions.items() if ruleset.counts(n) and n != old}
    if candidate is not None:
        eligible = {n: p for n, p in eligible.items() if n == candidate}
    if not eligible:
        raise RefusedError(f"even with --allow-data-loss there is no reachable eligible candidate: {refused.reason}")
    best = max(sorted(eligible), key=lambda n: eligible[n])
    forced = f"forced with allow-data-loss: {refused.reason}"
    return rule.FailoverDecision(True, best, refused.checks, forced), forced


def failover(store: EtcdStore, connect: Connect, **kw: object) -> Outcome:
    """:func:`gate`, then promote the candidate. Promotion happens only after the term commits."""
    outcome = gate(store, connect, **kw)  # type: ignore[arg-type]
    node = connect(outcome.member)
    try:
        node.promote()
    finally:
        node.close()
    return outcome
