"""``pgcohort restore``: where the ruleset, term or confirmation is invalid, commit its newest valid history entry again."""

from __future__ import annotations

from pgcohort.core.ruleset import decode, encode, restoration
from pgcohort.core.term import (
    Confirmation,
    Term,
    check_confirmation,
    check_pair,
    decode_confirmation,
    decode_term,
    encode_confirmation,
    encode_term,
    term_restoration,
)
from pgcohort.errors import ConflictError, InvalidRecordError, RefusedError
from pgcohort.store.records import Records
from pgcohort.store.transport import mod_equals, put


def restore(records: Records, *, actor: str, writer: str, now: str) -> list[str]:
    """Where the ruleset, term or confirmation is invalid, commit its newest valid history entry again.

    One CAS on all three. Returns what was restored. RefusedError if every record is valid
    (nothing is written).
    """
    rs_kv, term_kv, confirmed_kv = records.raw(
        "nothing to restore (a deleted key cannot be restored through the protocol; run `pgcohort init` "
        "for a new cluster)"
    )
    term: Term | None = None
    problems: dict[str, str] = {}
    try:
        term = records.term_of(term_kv).term
    except InvalidRecordError as e:
        problems["term"] = str(e)
    try:
        snap = records.snapshot(rs_kv)
        if term is not None:
            check_pair(snap.ruleset, term, records.root)
    except InvalidRecordError as e:
        problems["ruleset"] = str(e)
    if term is not None and confirmed_kv is not None:
        try:
            records.term_of(term_kv, confirmed_kv)
        except InvalidRecordError as e:
            problems["confirmation"] = str(e)
    if not problems:
        raise RefusedError(
            f"nothing to restore: the ruleset, term and confirmation under {records.root} are valid; nothing was "
            "changed"
        )
    success, done = [], []
    if term is None:
        terms = [t for _, t in records.audit("history/term-", decode_term, skip_invalid=True)]
        term = term_restoration(terms, int(term_kv.get("version", 0)), decided_by=actor, now=now, writer=writer)
        success += [
            put(records.term_key, encode_term(term)),
            put(records.term_history_key(term.term), encode_term(term)),
        ]
        done.append(f"term {term.term} (primary {term.primary}, from the term history)")
    if "ruleset" in problems or "term" in problems:
        try:
            check_pair(
                records.snapshot(rs_kv).ruleset, term, records.root
            )  # the ruleset may be fine with the restored term
        except InvalidRecordError:
            rulesets = [r for _, r in records.audit("history/0", decode, skip_invalid=True)]
            rs = restoration(
                rulesets,
                term.primary,
                int(rs_kv.get("version", 0)),
                changed_by=actor,
                now=now,
                writer=writer,
                problem=problems.get("ruleset", problems.get("term", "")),
            )
            success += [put(records.ruleset_key, encode(rs)), put(records.history_key(rs.version), encode(rs))]
            done.insert(0, f"ruleset version {rs.version}: {rs.show()} ({rs.reason})")
    if confirmed_kv is not None and ("confirmation" in problems or "term" in problems):
        confirmation = _confirmation_restoration(records, term)
        success.append(put(records.confirmed_key, encode_confirmation(confirmation)))
        done.append(f"the confirmation of term {confirmation.term} (primary {confirmation.primary}, from its history)")
    compare = [
        mod_equals(records.ruleset_key, int(rs_kv["mod_revision"])),
        mod_equals(records.term_key, int(term_kv["mod_revision"])),
        mod_equals(records.confirmed_key, int(confirmed_kv["mod_revision"]) if confirmed_kv else 0),
    ]
    ok, _ = records.transport.txn(compare, success, [])
    if not ok:
        raise ConflictError("the ruleset or term changed while restoring; nothing was written. Run restore again")
    return done


def _confirmation_restoration(records: Records, term: Term) -> Confirmation:
    """The newest recorded confirmation that the (restored) term can stand on: never a term later than it."""
    for _, c in sorted(
        records.audit("history/confirmed-", decode_confirmation, skip_invalid=True), key=lambda rc: -rc[1].term
    ):
        try:
            check_confirmation(term, c, records.root)
        except InvalidRecordError:
            continue
        return c
    raise RefusedError(
        f"no valid confirmation in the history fits term {term.term}; nothing was changed. Restore "
        f"{records.confirmed_key} by hand from a backup, naming the last primary seen running"
    )
