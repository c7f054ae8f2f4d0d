"""The failover gate: fence and survey, decide, record the term, and only then promote.

1. Read the ruleset, the term and its confirmation in one linearizable read (revisions R,
   T and C). The failed primary is the **reference**: the last *confirmed* term's primary
   (:mod:`pgcohort.core.term`); a later term whose primary was never seen running gives no
   authority, and its primary is surveyed like any member.
2. **Revoke** (fence) every reachable member of every active cohort except the reference:
   its WAL receiver stopped and seen stopped (or streaming from the candidate), archive
   restore off; only then read what it holds on disk (:meth:`Node.revoke`), so its position
   cannot grow behind the survey's back with writes the old primary counts as acknowledged.
   A member that is not in recovery is a second primary (possible after an indeterminate
   term write or a promotion outside pgcohort): the gate refuses and names both, and never
   picks it. A member whose WAL is on a timeline the reference's does not contain means an
   unrecorded promotion: refused too.
3. Apply the failover rule (:func:`pgcohort.core.failover.decide`) to every active rule.
   A refusal says which rule, how many members were reached and how many more are needed,
   and lifts the fences where the HA manager repoints standbys itself (:meth:`Node.release`).
4. Record the new term with one transaction that compares R, T and C. If the ruleset moved,
   this view was stale: re-read, survey again, decide again. If the term moved, another
   orchestrator decided first: stop, so that exactly one promotion happens. If our own term
   committed and was then superseded, stop too and say so.
5. Only after the term is committed is the candidate promoted (:func:`failover`); the
   gate alone (:func:`gate`, through :func:`pre_promote`) is what an HA manager's pre-promote
   hook calls. Where the HA manager promotes with the candidate's own setting, the hook puts
   the rule in force on it first (:func:`hand_over`); where it elects the same candidate again
   after a veto, a refused hook promotes the member the rule allows itself (:func:`steer`).
6. After the promotion, :func:`failover` records the term's confirmation and repoints the
   revoked survivors to the new primary (:meth:`Node.follow`, with the connection options
   each had before), so the new rule's standbys stream again and its commits can be
   acknowledged. Under Patroni, Patroni repoints them, and its rewrite of each member's
   recovery settings drops the fence.

The escape hatch ``allow_data_loss`` promotes the most advanced reachable eligible member
when the rule refuses; the term records the override (``forced``) and so does the term
history. It is never taken automatically.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from pgcohort import protocol
from pgcohort.core import failover as rule
from pgcohort.core import steps
from pgcohort.core.failover import Position, format_lsn
from pgcohort.core.rules import Member, Rule
from pgcohort.core.ruleset import Ruleset
from pgcohort.core.term import Term
from pgcohort.errors import ConflictError, NotStandbyError, PgcohortError, RefusedError, SupersededError
from pgcohort.protocol import now
from pgcohort.seams import Node, Revision, Store, TermSnapshot

Connect = Callable[[Member], Node]


@dataclass(frozen=True)
class Survey:
    positions: dict[str, Position]  # fenced members and what each holds
    unreachable: dict[str, str]  # members that could not be fenced or read, and why
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
    reference: str = ""  # the failed primary the decision reasoned from (the last confirmed term's)
    based_on: TermSnapshot | None = None  # the term as read, for the confirmation after promoting
    ruleset: Ruleset | None = None  # the committed ruleset the decision was made under

    @property
    def candidate(self) -> str:
        assert self.decision.candidate is not None
        return self.decision.candidate


def _members(ruleset: Ruleset) -> dict[str, Member]:
    members: dict[str, Member] = {}
    for r in ruleset.active_rules():
        for m in r.cohort:
            members.setdefault(m.name, m)
    return members


def survey(
    ruleset: Ruleset, reference: str, connect: Connect, *, candidate: str | None = None, timeout: float = 10.0
) -> Survey:
    """Fence every member of every active cohort but ``reference`` (and the candidate, whoever it is), in
    parallel, and read what each holds."""
    everyone = _members(ruleset)
    members = {n: m for n, m in everyone.items() if n != reference or n == candidate}
    upstream = everyone.get(candidate) if candidate is not None else None

    def revoke(m: Member) -> Position:
        node = connect(m)
        try:
            return node.revoke(timeout=timeout, candidate=upstream)
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


def release(ruleset: Ruleset, connect: Connect, names: Iterable[str]) -> dict[str, str]:
    """Lift the fences on ``names`` where the HA manager repoints standbys itself; what failed, per member."""
    members, failed = _members(ruleset), {}
    for name in sorted(names):
        try:
            node = connect(members[name])
            try:
                node.release()
            finally:
                node.close()
        except PgcohortError as e:
            failed[name] = str(e)
    return failed


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
    wording: rule.Wording = rule.PLAIN,
) -> Outcome:
    """Fence and survey, decide and record the new term. Raises RefusedError or ConflictError.

    ``wording`` phrases a refusal's remedy for whoever promotes (Patroni's words under Patroni).
    """
    for attempt in range(1, attempts + 1):
        snap, term = store.read_both()
        old = term.reference
        if candidate is not None and candidate == term.term.primary and term.confirmed:
            raise RefusedError(f"{candidate} is the current primary (term {term.term.term}); nothing to fail over")
        if candidate is not None and not snap.ruleset.counts(candidate):
            raise RefusedError(
                f"{candidate} may not be promoted: it is not a member of every active rule of the committed ruleset "
                f"(version {snap.ruleset.version}: {snap.ruleset.show()}), so it may lack acknowledged writes. "
                "No term was written and nothing was promoted. Add it with `pgcohort add` first"
            )
        found = survey(snap.ruleset, old, connect, candidate=candidate, timeout=survey_timeout)
        try:
            decision, forced, lsn = _decide(snap.ruleset, term, found, candidate, allow_data_loss, wording)
        except RefusedError as e:
            failed = release(snap.ruleset, connect, found.positions)
            kept = "".join(f" The fence on {n} could not be lifted: {why}." for n, why in failed.items())
            raise RefusedError(f"{e}{kept}") from None
        new_term = Term(term.term.term + 1, decision.candidate or "", snap.revision, lsn, actor, now(), writer, forced)
        try:
            rev = store.put_term(snap.revision, term, new_term)
        except SupersededError as e:
            raise ConflictError(f"{e}; not promoting. Nothing was promoted by this run") from None
        except ConflictError:
            _, now_term = store.read_both()
            if now_term.revision != term.revision or now_term.confirmation_revision != term.confirmation_revision:
                # Another orchestrator decided first (or a term was confirmed): failing over again could
                # promote twice, or reason from the wrong primary.
                raise ConflictError(
                    f"term {now_term.term.term} (primary {now_term.term.primary}, decided by "
                    f"{now_term.term.decided_by}) was committed or confirmed while this failover was surveying; "
                    "not failing over again. Nothing was promoted by this run"
                ) from None
            if attempt == attempts:
                raise
            continue  # the ruleset moved: this view was stale; read, survey and decide again
        member = _members(snap.ruleset)[new_term.primary]
        release(snap.ruleset, connect, [new_term.primary])  # the one to be promoted keeps no fence behind
        return Outcome(
            decision, found, new_term, snap.revision, rev, attempt, member, snap.ruleset.active_rules(),
            reference=old, based_on=term, ruleset=snap.ruleset,
        )  # fmt: skip
    raise AssertionError("unreachable")


def _decide(
    ruleset: Ruleset,
    term: TermSnapshot,
    found: Survey,
    candidate: str | None,
    allow_data_loss: bool,
    wording: rule.Wording,
) -> tuple[rule.FailoverDecision, str, int]:
    """The decision on a survey, the override it took (if forced) and the candidate's position; RefusedError."""
    old = term.reference
    if found.primaries:
        others = ", ".join(f"{n} (at {format_lsn(p)})" for n, p in sorted(found.primaries.items()))
        raise RefusedError(
            f"failover from {old} refused: {others} is not in recovery although {old} is the last primary seen "
            f"running (term {term.term.term} names {term.term.primary}): two primaries, {old} and {others}. No "
            "term was written and nothing was promoted. Stop the one that should not be primary (an indeterminate "
            "term write or a promotion outside pgcohort can cause this), check `pgcohort status`, then fail over "
            "again"
        )
    positions, foreign = rule.on_reference(found.positions, term.timeline)
    if foreign:
        why = "; ".join(f"{n}: {w}" for n, w in sorted(foreign.items()))
        raise RefusedError(
            f"failover from {old} refused: {why}. A promotion happened that no confirmation recorded (a term "
            f"whose primary ran but was never seen running by its sidecar, or a promotion outside pgcohort), and "
            "writes acknowledged on that timeline cannot be judged from here. No term was written and nothing "
            "was promoted. Start the sidecar beside the primary of that promotion so that it records its term "
            f"(`pgcohort history --terms`), or, accepting the loss of acknowledged writes, {wording.force}"
        )
    decision = rule.decide(ruleset, old, positions, candidate, wording)
    forced = ""
    if not decision.allowed:
        unreachable = "; ".join(f"{n}: {why}" for n, why in sorted(found.unreachable.items()))
        if not allow_data_loss:
            raise RefusedError(
                f"failover from {old} refused: {decision.reason}"
                + (f" (unreachable: {unreachable})" if unreachable else "")
                + f"\n{decision}\nNo term was written and nothing was promoted. {decision.remedy}"
            )
        decision, forced = _forced(ruleset, old, positions, candidate, decision)
    return decision, forced, positions[decision.candidate or ""]


def _forced(
    ruleset: Ruleset, old: str, positions: dict[str, int], candidate: str | None, refused: rule.FailoverDecision
) -> tuple[rule.FailoverDecision, str]:
    eligible = {n: p for n, p in positions.items() if ruleset.counts(n) and (n != old or n == candidate)}
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


def pre_promote(
    store: Store,
    connect: Connect,
    *,
    candidate: str,
    actor: str,
    writer: str,
    wording: rule.Wording = rule.PLAIN,
) -> Outcome | str:
    """What an HA manager's pre-promote hook asks: may ``candidate`` be promoted now?

    A node whose running is on record (the current term names it and is confirmed) takes its
    own leader key back (Patroni calls the hook after a restart too): allowed, and no new
    term is written, since a primary holds every write it acknowledged. So does the candidate
    of a term an operator forced with ``--allow-data-loss`` (the hook then lets Patroni
    promote it). A term that names the candidate but was neither confirmed nor forced gives
    no such right: the gate surveys, as for anyone.
    A reference primary (the last one seen running) that still answers as a primary is not
    fenced: refused. Otherwise :func:`gate` decides. Raises RefusedError or ConflictError
    when it must not be promoted.
    """
    return _before_survey(store, connect, candidate, wording) or gate(
        store, connect, actor=actor, writer=writer, candidate=candidate, wording=wording
    )


def _before_survey(store: Store, connect: Connect, candidate: str, wording: rule.Wording) -> str | None:
    """The hook's checks before any survey (:func:`pre_promote`): the message when the candidate takes its own
    term back, RefusedError while the reference primary still runs as a primary, None when a survey decides."""
    snap, term = store.read_both()
    if candidate == term.term.primary and (term.confirmed or term.term.forced):
        why = "seen running" if term.confirmed else "forced by hand with --allow-data-loss"
        return (
            f"term {term.term.term} already names {candidate} as the primary ({why}): it takes its own leader key; "
            "no new term written"
        )
    old = term.reference
    member = _members(snap.ruleset).get(old)
    if member is not None and old != candidate:
        node = connect(member)
        try:
            seen = node.observe()
        except PgcohortError:
            seen = None  # down or unreachable: what a failover expects
        finally:
            node.close()
        if seen is not None and seen.primary:
            raise RefusedError(
                f"promotion of {candidate} vetoed: {old}, the last primary seen running (term "
                f"{term.confirmation.term if term.confirmation else term.term.term}), still runs as a primary (at "
                f"{format_lsn(seen.lsn)}), so it is not fenced and could still acknowledge writes {candidate} "
                f"lacks. No term was written. {wording.demote}"
            )
    return None


def hand_over(outcome: Outcome, connect: Connect) -> Outcome:
    """Before an HA manager that promotes the allowed candidate itself does so (``Hook.hand_over``, repmgr): the
    rule rendered for it in force on it (its first commit as a primary waits for the rule, as :func:`failover`
    promotes), and the members the gate fenced repointed to it, never back to the old primary. A failure raises
    (the hook vetoes); the term stays unconfirmed, and the next gate reasons from the last primary seen running."""
    assert outcome.ruleset is not None
    setting = steps.desired(outcome.ruleset, outcome.ruleset_revision, outcome.candidate, outcome.candidate)
    node = connect(outcome.member)
    try:
        node.prepare(setting)
    finally:
        node.close()
    return replace(outcome, followers=repoint(outcome, connect))


def steer(
    store: Store,
    connect: Connect,
    *,
    candidate: str,
    actor: str,
    writer: str,
    wording: rule.Wording = rule.PLAIN,
) -> Outcome | str:
    """:func:`pre_promote` for an HA manager that elects the same candidate again after a veto (``Hook.steer``,
    repmgr), where a veto alone only buys time.

    When the survey refuses ``candidate`` (behind another member, or not a member), :func:`failover` promotes the
    member the rule allows, through every step of ``pgcohort failover`` (fence, survey, decision, the term's
    compare-and-swap, promotion with the rule in force, confirmation, repoint of every surveyed member), and the
    veto stands, naming it: the HA manager promotes nobody else and follows the new primary. Never allows after
    promoting another member. When no member is allowed, the first refusal stands; a refusal before any survey
    (the last primary seen running still runs) is never steered.
    """
    own = _before_survey(store, connect, candidate, wording)
    if own is not None:
        return own
    try:
        return gate(store, connect, actor=actor, writer=writer, candidate=candidate, wording=wording)
    except RefusedError as e:
        refused = e
    try:
        other = failover(store, connect, actor=actor, writer=writer)
    except PgcohortError as e:
        raise RefusedError(f"{refused}\nNo other member was promoted instead: {str(e).splitlines()[0]}") from None
    stuck = "".join(f"; {n} NOT repointed: {why}" for n, why in sorted(other.followers.items()))
    raise RefusedError(
        f"{refused}\nSteered: promoted {other.candidate} instead (term {other.term.term}, with the rule in force) "
        f"and repointed the members surveyed to it{stuck}. The veto of {candidate} stands, so that the HA manager "
        "promotes nobody else; it follows the new primary"
    )


def failover(
    store: Store,
    connect: Connect,
    *,
    actor: str,
    writer: str,
    candidate: str | None = None,
    allow_data_loss: bool = False,
) -> Outcome:
    """:func:`gate`, then promote the candidate, record that it runs, and repoint the survivors.

    Promotion happens only after the term commits, with the rule rendered for the candidate
    already in force, so no commit on the new primary is acknowledged by fewer standbys than
    the rule asks. The confirmation is best effort here: the sidecar beside the new primary
    records it too.
    """
    outcome = gate(store, connect, actor=actor, writer=writer, candidate=candidate, allow_data_loss=allow_data_loss)
    node = connect(outcome.member)
    assert outcome.ruleset is not None
    setting = steps.desired(outcome.ruleset, outcome.ruleset_revision, outcome.candidate, outcome.candidate)
    try:
        node.promote(setting=setting)
        if outcome.based_on is not None:
            t = outcome.based_on
            with contextlib.suppress(PgcohortError):
                protocol.confirm(
                    store,
                    TermSnapshot(outcome.term, outcome.term_revision, t.confirmation, t.confirmation_revision),
                    node.timeline(),
                    outcome.term.lsn,
                    actor=actor,
                )
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
