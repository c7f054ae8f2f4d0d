"""The membership protocol of DESIGN.md, composed from the pure core and a :class:`Store`.

``init`` (create-if-absent), ``propose`` (step 1) and ``finalize`` (step 3) each read the
committed ruleset linearizably, let the core validate and build the next value, and commit
it with one compare-and-swap; ``confirm`` records that a term's primary was seen running.
A conflict means someone else committed first: re-read,
re-validate (which may now refuse), and retry a bounded number of times. A write whose
first attempt committed and was then superseded is reported as committed, with what
superseded it. Step 2 (apply + barrier) belongs to the sidecar beside the primary.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from pgcohort.core import ruleset as core
from pgcohort.core.rules import Rule
from pgcohort.core.term import Confirmation, Term, Timeline
from pgcohort.errors import ConflictError, SupersededError
from pgcohort.seams import Revision, Snapshot, Store, TermSnapshot


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def new_writer(actor: str) -> str:
    """A writer id: who wrote the value, unique per write, to recognise one's own write later."""
    return f"{actor}/{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Committed:
    """A ruleset this process committed, how many conflicts it took, and what superseded it, if anything."""

    snapshot: Snapshot
    conflicts: int
    superseded: str = ""


def first(rule: Rule, primary: str, *, actor: str) -> tuple[core.Ruleset, Term]:
    """Version 1 of the ruleset and term 1 naming ``primary``, validated by the core."""
    writer = new_writer(actor)
    at = now()
    rs = core.initial(rule, primary, changed_by=actor, now=at, writer=writer)
    return rs, Term(1, primary, 0, None, actor, at, writer)


def init(store: Store, rule: Rule, primary: str, *, actor: str) -> Committed:
    rs, term = first(rule, primary, actor=actor)
    return Committed(Snapshot(rs, store.init(rs, term)), 0)


def propose(store: Store, what: core.Change, *, actor: str, attempts: int = 5) -> Committed:
    """Propose ``what``: commit the joint ruleset, re-validating after every conflict."""
    conflicts = 0
    while True:
        snap, term = store.read_both()
        proposed = core.propose(
            snap.ruleset, what, term.term.primary, changed_by=actor, now=now(), writer=new_writer(actor)
        )
        try:
            rev = store.commit(snap.revision, proposed, term_revision=term.revision)
            return Committed(Snapshot(proposed, rev), conflicts)
        except SupersededError as e:
            return Committed(Snapshot(proposed, Revision(e.committed_revision)), conflicts, str(e))
        except ConflictError:
            conflicts += 1
            if conflicts >= attempts:
                raise ConflictError(
                    f"gave up on {what} after {conflicts} conflicts: the ruleset keeps changing under "
                    "us. Nothing of ours was written; retry later"
                ) from None


def finalize(
    store: Store,
    *,
    actor: str,
    expected: Revision | None = None,
    based_on: tuple[Snapshot, TermSnapshot] | None = None,
) -> Committed:
    """Finalize the joint phase with a CAS on the ruleset's and the term's revisions: those of
    ``based_on`` (the read a sidecar's decision was made on), or of a read made now (and then
    only if the ruleset is still at ``expected``). A failover since that read fails the CAS."""
    snap, term = based_on or store.read_both()
    if expected is not None and snap.revision != expected:
        raise ConflictError(
            f"the ruleset moved from revision {expected} to {snap.revision}; not finalizing a "
            "ruleset that was not the one applied",
            current_revision=snap.revision,
        )
    final = core.finalize(snap.ruleset, changed_by=actor, now=now(), writer=new_writer(actor))
    try:
        return Committed(Snapshot(final, store.commit(snap.revision, final, term_revision=term.revision)), 0)
    except SupersededError as e:
        return Committed(Snapshot(final, Revision(e.committed_revision)), 0, str(e))


def confirm(store: Store, based_on: TermSnapshot, timeline: Timeline, lsn: int | None, *, actor: str) -> Revision:
    """Record that ``based_on``'s term's primary runs as a primary, on ``timeline`` (one CAS on the term and
    the confirmation). ConflictError if either moved since that read."""
    t = based_on.term
    return store.confirm(based_on, Confirmation(t.term, t.primary, timeline, lsn, actor, now(), new_writer(actor)))
