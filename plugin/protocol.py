"""The membership protocol of DESIGN.md, composed from the pure core and the store.

``init`` (create-if-absent), ``change`` (step 1, propose) and ``finish`` (step 3,
finalize) each read the committed ruleset linearizably, let the core validate and build the
next value, and commit it with one compare-and-swap. A conflict means someone else
committed first: re-read, re-validate (which may now refuse), and retry a bounded number
of times. Step 2 (apply + barrier) belongs to the sidecar beside the primary.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from plugin.core import ruleset as core
from plugin.core.rules import Rule
from plugin.errors import ConflictError
from plugin.store import EtcdStore, Revision, Snapshot


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def new_writer(actor: str) -> str:
    """A writer id: who wrote the value, unique per write, to recognise one's own write later."""
    return f"{actor}/{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Committed:
    """A ruleset this process committed, and how many conflicts it took."""

    snapshot: Snapshot
    conflicts: int


def init(store: EtcdStore, rule: Rule, primary: str, *, actor: str) -> Committed:
    writer = new_writer(actor)
    at = now()
    rs = core.initial(rule, primary, changed_by=actor, now=at, writer=writer)
    term = core.Term(1, primary, 0, None, actor, at, writer)
    rev = store.init(rs, term)
    return Committed(Snapshot(rs, rev), 0)


def change(store: EtcdStore, what: core.Change, *, actor: str, attempts: int = 5) -> Committed:
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
        except ConflictError:
            conflicts += 1
            if conflicts >= attempts:
                raise ConflictError(
                    f"gave up on {what} after {conflicts} conflicts: the ruleset keeps changing under "
                    "us. Nothing of ours was written; retry later"
                ) from None


def finish(store: EtcdStore, *, actor: str, expected: Revision | None = None) -> Committed:
    """Finalize the joint phase with a CAS on ``expected`` (or on the revision read now)."""
    snap = store.read()
    if expected is not None and snap.revision != expected:
        raise ConflictError(
            f"the ruleset moved from revision {expected} to {snap.revision}; not finalizing a "
            "ruleset that was not the one applied",
            current_revision=snap.revision,
        )
    final = core.finalize(snap.ruleset, changed_by=actor, now=now(), writer=new_writer(actor))
    rev = store.commit(snap.revision, final)
    return Committed(Snapshot(final, rev), 0)
