"""The failover gate: revoke and survey, decide, record the term, and only then promote.

1. Read the ruleset and the term in one linearizable read (revisions R and T).
2. **Revoke** every reachable member of every active cohort except the failed primary
   (it stops receiving WAL, so its position cannot grow behind the survey's back) and
   read its position. A member that is not in recovery is a second primary (possible after
   an indeterminate term write or a promotion outside pgcohort): the gate refuses and names
   both, and never picks it.
3. Apply the failover rule (:func:`pgcohort.core.failover.decide`) to every active rule.
   A refusal says which rule, how many members were reached and how many more are needed.
4. Record the new term with one transaction that compares R and T. If the ruleset moved,
   this view was stale: re-read, survey again, decide again. If the term moved, another
   orchestrator decided first: stop, so that exactly one promotion happens. If our own term
   committed and was then superseded, stop too and say so.
5. Only after the term is committed is the candidate promoted (:func:`failover`); the
   gate alone (:func:`gate`) is what an HA manager's pre-promote hook calls.
6. After the promotion, :func:`failover` repoints the revoked survivors to the new primary
   (:meth:`Node.follow`, with the connection options each had before), so the new rule's
   standbys stream again and its commits can be acknowledged. Under Patroni, Patroni does
   this itself and the revoke changed nothing.

The escape hatch ``allow_data_loss`` promotes the most advanced reachable eligible member
when the rule refuses; the term records the override (``forced``) and so does the term
history. It is never taken automatically.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pgcohort.core import failover as rule
from pgcohort.core.failover import format_lsn
from pgcohort.core.rules import Member, Rule
from pgcohort.core.ruleset import Ruleset, Term
from pgcohort.errors import ConflictError, NotStandbyError, PgcohortError, RefusedError, SupersededError
from pgcohort.protocol import now
from pgcohort.seams import Node, Revision, Store

Connect = Callable[[Member], Node]


@dataclass(frozen=True)
class Survey:
    positions: dict[str, int]  # revoked members and their final positions
    unreachable: dict[str, str]  # members that could not be revoked, and why
    primaries: dict[str, int] = field(default_factory=dict)  # members not in recovery, and their positions


@dataclass(frozen=True)
class Outcome:
    decision: rule.FailoverDecision
    survey: Survey
    term: Term
    ruleset_revision: Revision
    term_revision: Revision
    attempts: int  # 1 unless a stale view had to be re-read
    member: Member  # the candidate as the committed ruleset describes it
    rules: tuple[Rule, ...] = ()  # the active rules the decision was made under
    followers: dict[str, str] = field(default_factory=dict)  # survivors that could not be repointed, and why

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

    positions, unreachable, primaries = {}, {}, {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
        futures = {name: pool.submit(revoke, m) for name, m in members.items()}
        for name, fut in futures.items():
            try:
                positions[name] = fut.result(timeout=timeout + 5)
            except NotStandbyError as e:
                primaries[name] = e.position
            except (PgcohortError, concurrent.futures.TimeoutError) as e:
                unreachable[name] = str(e) or type(e).__name__
    return Survey(positions, unreachable, primaries)


def gate(
    store: Store,
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
        if candidate is not None and not snap.ruleset.counts(candidate):
            raise RefusedError(
                f"{candidate} may not be promoted: it is not a member of every active rule of the committed ruleset "
                f"(version {snap.ruleset.version}: {snap.ruleset.show()}), so it may lack acknowledged writes. "
                "No term was written and nothing was promoted. Add it with `pgcohort add` first"
            )
        found = survey(snap.ruleset, old, connect, timeout=survey_timeout)
        if found.primaries:
            others = ", ".join(f"{n} (at {format_lsn(p)})" for n, p in sorted(found.primaries.items()))
            raise RefusedError(
                f"failover from {old} refused: {others} is not in recovery although term {term.term.term} "
                f"names {old} as the primary: two primaries, {old} and {others}. No term was written and nothing "
                "was promoted. Stop the one that should not be primary (an indeterminate term write or a "
                "promotion outside pgcohort can cause this), check `pgcohort status`, then fail over again"
            )
        decision = rule.decide(snap.ruleset, old, found.positions, candidate)
        forced = ""
        if not decision.allowed:
            unreachable = "; ".join(f"{n}: {why}" for n, why in sorted(found.unreachable.items()))
            if not allow_data_loss:
                raise RefusedError(
                    f"failover from {old} refused: {decision.reason}"
                    + (f" (unreachable: {unreachable})" if unreachable else "")
                    + f"\n{decision}\nNo term was written and nothing was promoted. {decision.remedy}"
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
        except SupersededError as e:
            raise ConflictError(f"{e}; not promoting. Nothing was promoted by this run") from None
        except ConflictError:
            _, now_term = store.read_both()
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
        return Outcome(decision, found, new_term, snap.revision, rev, attempt, member, snap.ruleset.active_rules())
    raise AssertionError("unreachable")


def _forced(
    ruleset: Ruleset, old: str, found: Survey, candidate: str | None, refused: rule.FailoverDecision
) -> tuple[rule.FailoverDecision, str]:
    eligible = {n: p for n, p in found.positions.items() if ruleset.counts(n) and n != old}
    if candidate is not None:
        eligible = {n: p for n, p in eligible.items() if n == candidate}
    if not eligible:
        raise RefusedError(
            f"even with --allow-data-loss there is no reachable eligible candidate: {refused.reason}. "
            "No term was written and nothing was promoted"
        )
    best = max(sorted(eligible), key=lambda n: eligible[n])
    forced = f"forced with allow-data-loss: {refused.reason}"
    return rule.FailoverDecision(True, best, refused.checks, forced), forced


def pre_promote(store: Store, connect: Connect, *, candidate: str, actor: str, writer: str) -> Outcome | str:
    """What an HA manager's pre-promote hook asks: may ``candidate`` be promoted now?

    A node the current term already names takes its own leader key back (Patroni calls the
    hook after a restart too): allowed, and no new term is written, since a primary holds
    every write it acknowledged. An old primary that still answers as a primary is not
    fenced: refused. Otherwise :func:`gate` decides. Raises RefusedError or ConflictError
    when it must not be promoted.
    """
    snap, term = store.read_both()
    old = term.term.primary
    if old == candidate:
        return (
            f"term {term.term.term} already names {candidate} as the primary: it takes its own leader key "
            "back; no new term written"
        )
    member = next((m for r in snap.ruleset.active_rules() for m in r.cohort if m.name == old), None)
    if member is not None:
        node = connect(member)
        try:
            seen = node.observe()
        except PgcohortError:
            seen = None  # down or unreachable: what a failover expects
        finally:
            node.close()
        if seen is not None and seen.primary:
            raise RefusedError(
                f"promotion of {candidate} vetoed: {old}, the primary of term {term.term.term}, still runs as a "
                f"primary (at {format_lsn(seen.lsn)}), so it is not fenced and could still acknowledge writes "
                f"{candidate} lacks. No term was written. Let the HA manager demote it (or stop it), then retry"
            )
    return gate(store, connect, actor=actor, writer=writer, candidate=candidate)


def failover(
    store: Store,
    connect: Connect,
    *,
    actor: str,
    writer: str,
    candidate: str | None = None,
    allow_data_loss: bool = False,
) -> Outcome:
    """:func:`gate`, then promote the candidate. Promotion happens only after the term commits."""
    outcome = gate(store, connect, actor=actor, writer=writer, candidate=candidate, allow_data_loss=allow_data_loss)
    node = connect(outcome.member)
    try:
        node.promote()
    finally:
        node.close()
    return replace(outcome, followers=repoint(outcome, connect))


def repoint(outcome: Outcome, connect: Connect) -> dict[str, str]:
    """After the promotion, the revoked survivors follow the new primary; what failed, per member."""
    survivors = [m for r in outcome.rules for m in r.cohort if m.name in outcome.survey.positions]
    failed: dict[str, str] = {}
    for m in {m.name: m for m in survivors if m.name != outcome.candidate}.values():
        try:
            node = connect(m)
            try:
                node.follow(outcome.member)
            finally:
                node.close()
        except PgcohortError as e:
            failed[m.name] = str(e)
    return failed
