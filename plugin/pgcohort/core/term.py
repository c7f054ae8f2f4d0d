"""The term, its confirmation, and the primary a failover reasons from.

Pure: the values, their record format and the rules; nothing is read or written here.

A **term** names a primary. It is written by a gated promotion *before* the HA manager
promotes (or by ``init`` for the running primary), so it authorizes a promotion; it does not
prove one happened. The HA manager may die, lose its leader key or fail to promote right
after the gate said yes.

A term is **confirmed** once its primary was seen running as a primary: the sidecar beside
it (or ``pgcohort failover``, after promoting) records a :class:`Confirmation` with the
primary's timeline and that timeline's ancestry. Only a primary that ran can have
acknowledged a write, so the failover rule reasons from the **reference**: the primary of
the last confirmed term (:func:`reference`). Its electorate leaves the reference out; every
other member, the primary of a later unconfirmed term included, is a voter surveyed like
anyone. This is Raft's rule that a leader which never committed in its term gives no
authority, and pgconsul's "do not publish the quorum before the promote succeeds".

Why an unconfirmed primary needs nothing more: if it never ran, it holds no write of its own
and is an ordinary voter. If it did run and acknowledged writes, each such write is on the
primary itself and on K members of its electorate; at least K of those K + 1 holders are in
the reference's electorate, so a survey of ``|E| - K + 1`` of them meets one, and that holder's
WAL is on a timeline the reference's timeline does not contain (every promotion starts one),
which the survey refuses (:func:`pgcohort.core.failover.on_reference`). Either way no
acknowledged write is missed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from pgcohort.core.rules import check_member_name
from pgcohort.core.ruleset import RESTORE_HINT, Ruleset, check_invariants, field_of
from pgcohort.core.wal import Switch
from pgcohort.errors import InvalidInputError, InvalidRecordError, RefusedError


@dataclass(frozen=True)
class Term:
    """Who is primary, decided by a gated promotion (or by ``init``)."""

    term: int
    primary: str
    ruleset_revision: int
    lsn: int | None = None
    decided_by: str = ""
    at: str = ""
    writer: str = ""
    forced: str = ""

    def next(self, primary: str, ruleset_revision: int, **kw: Any) -> Term:
        return replace(self, term=self.term + 1, primary=primary, ruleset_revision=ruleset_revision, **kw)


@dataclass(frozen=True)
class Timeline:
    """A PostgreSQL timeline and its ancestry: ``history`` says where each earlier timeline ended."""

    id: int
    history: tuple[Switch, ...] = ()

    def contains(self, tli: int, lsn: int) -> int | None:
        """How much of timeline ``tli`` up to ``lsn`` this timeline also holds (None: ``tli`` is not in its ancestry).

        WAL of this timeline itself is held up to ``lsn``; WAL of an ancestor only up to where
        this timeline forked from it.
        """
        if tli == self.id:
            return lsn
        for s in self.history:
            if s.tli == tli:
                return min(lsn, s.lsn)
        return None

    def show(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class Confirmation:
    """Term ``term``'s primary was seen running as a primary, on ``timeline`` (None: not read yet)."""

    term: int
    primary: str
    timeline: Timeline | None = None
    lsn: int | None = None  # its WAL position when it was seen
    by: str = ""
    at: str = ""
    writer: str = ""


def confirmed(term: Term, confirmation: Confirmation | None) -> bool:
    """True when ``term`` itself is confirmed (its primary ran as a primary).

    A cluster without any confirmation record (made before confirmations existed) counts its
    current term as confirmed, as it was treated then; the sidecar beside its running primary
    writes the record at its first round.
    """
    if confirmation is None:
        return True
    return confirmation.term == term.term and confirmation.primary == term.primary


def confirmation_due(term: Term, confirmation: Confirmation | None) -> bool:
    """True until ``term``'s own confirmation, with its primary's timeline, is recorded."""
    return confirmation is None or confirmation.term != term.term or confirmation.timeline is None


def reference(term: Term, confirmation: Confirmation | None) -> str:
    """The primary a failover reasons from: the last confirmed term's primary."""
    if confirmation is None:
        return term.primary
    return confirmation.primary


def check_confirmation(term: Term, confirmation: Confirmation | None, where: str) -> None:
    """A confirmation names a term no later than the current one, and the same primary when it is the current one."""
    if confirmation is None:
        return
    if confirmation.term > term.term or (confirmation.term == term.term and confirmation.primary != term.primary):
        raise InvalidRecordError(
            f"{where}: the confirmation (term {confirmation.term}, primary {confirmation.primary}) contradicts the "
            f"term (term {term.term}, primary {term.primary}). " + RESTORE_HINT,
            record="term",
        )


def check_pair(ruleset: Ruleset, term: Term, where: str) -> None:
    """Invariant 4 across the two records: every active rule is enforceable by the term's primary."""
    try:
        check_invariants(ruleset, term.primary)
    except (AssertionError, RefusedError) as e:
        raise InvalidRecordError(
            f"{where}: the ruleset (version {ruleset.version}) and the term (term {term.term}, primary "
            f"{term.primary}) contradict each other: {e}. " + RESTORE_HINT
        ) from None


def term_restoration(history: list[Term], key_version: int, *, decided_by: str, now: str, writer: str) -> Term:
    """The term ``pgcohort restore`` commits: the newest valid term in its history, numbered after the key's writes."""
    if not history:
        raise RefusedError("the term history is empty: nothing valid to restore; nothing was changed")
    old = max(history, key=lambda t: t.term)
    return replace(old, term=key_version + 1, decided_by=decided_by, at=now, writer=writer)


# --- the record formats (JSON in etcd) ------------------------------------------------


def term_to_record(t: Term) -> dict[str, Any]:
    return {
        "term": t.term,
        "primary": t.primary,
        "ruleset_revision": t.ruleset_revision,
        "lsn": t.lsn,
        "decided_by": t.decided_by,
        "at": t.at,
        "writer": t.writer,
        "forced": t.forced,
    }


def encode_term(t: Term) -> bytes:
    return json.dumps(term_to_record(t), sort_keys=True, separators=(",", ":")).encode()


def _lsn(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
        raise InvalidInputError(f"field {key!r} has the wrong type")
    return v


def decode_term(raw: bytes, where: str) -> Term:
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise InvalidInputError("must be a JSON object")
        number = field_of(d, "term", int, "term")
        if number < 1:
            raise InvalidInputError(f"term {number} < 1")
        return Term(
            number,
            check_member_name(field_of(d, "primary", str, "term")),
            field_of(d, "ruleset_revision", int, "term"),
            _lsn(d, "lsn"),
            str(d.get("decided_by", "")),
            str(d.get("at", "")),
            str(d.get("writer", "")),
            str(d.get("forced", "")),
        )
    except (ValueError, InvalidInputError) as e:
        raise InvalidRecordError(
            f"{where} is not a valid pgcohort term ({e}). " + RESTORE_HINT, record="term"
        ) from None


def confirmation_to_record(c: Confirmation) -> dict[str, Any]:
    timeline = (
        None if c.timeline is None else {"id": c.timeline.id, "history": [[s.tli, s.lsn] for s in c.timeline.history]}
    )
    return {
        "term": c.term,
        "primary": c.primary,
        "timeline": timeline,
        "lsn": c.lsn,
        "by": c.by,
        "at": c.at,
        "writer": c.writer,
    }


def encode_confirmation(c: Confirmation) -> bytes:
    return json.dumps(confirmation_to_record(c), sort_keys=True, separators=(",", ":")).encode()


def _timeline_from(d: Any) -> Timeline | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise InvalidInputError("field 'timeline' must be an object or null")
    tli = field_of(d, "id", int, "timeline")
    history = field_of(d, "history", list, "timeline")
    switches = []
    for entry in history:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry)
        ):
            raise InvalidInputError("timeline.history entries must be [timeline, lsn] pairs of whole numbers")
        switches.append(Switch(entry[0], entry[1]))
    if tli < 1 or any(s.tli >= tli for s in switches):
        raise InvalidInputError(f"timeline {tli} with history {history} is not a timeline and its ancestors")
    return Timeline(tli, tuple(switches))


def decode_confirmation(raw: bytes, where: str) -> Confirmation:
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise InvalidInputError("must be a JSON object")
        number = field_of(d, "term", int, "confirmation")
        if number < 1:
            raise InvalidInputError(f"term {number} < 1")
        return Confirmation(
            number,
            check_member_name(field_of(d, "primary", str, "confirmation")),
            _timeline_from(d.get("timeline")),
            _lsn(d, "lsn"),
            str(d.get("by", "")),
            str(d.get("at", "")),
            str(d.get("writer", "")),
        )
    except (ValueError, InvalidInputError) as e:
        raise InvalidRecordError(
            f"{where} is not a valid pgcohort confirmation ({e}). " + RESTORE_HINT, record="term"
        ) from None
