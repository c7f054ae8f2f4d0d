"""The ruleset, the term and its confirmation: linearizable reads and compare-and-swap writes with their audit log.

Every write is one transaction that compares ``mod_revision`` and writes the ``history/``
entry beside the value. A write whose answer was lost is retried unchanged (see
:mod:`pgcohort.store.transport`); when the compare then fails, the failure branch reads the
current value *and* this write's history entry in the same round trip, so an earlier
attempt of ours is recognised by its writer id even after someone else superseded it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pgcohort.core.ruleset import Ruleset, check_written_by_protocol, decode, encode
from pgcohort.core.term import (
    Confirmation,
    Term,
    check_confirmation,
    check_pair,
    decode_confirmation,
    decode_term,
    encode_confirmation,
    encode_term,
)
from pgcohort.errors import (
    ConflictError,
    InvalidInputError,
    InvalidRecordError,
    NotInitializedError,
    RefusedError,
    SupersededError,
)
from pgcohort.seams import Revision, Snapshot, TermSnapshot
from pgcohort.store.transport import Transport, absent, branch_kvs, get, mod_equals, put, unb64, writer_of

T = TypeVar("T")


class Records:
    """``ruleset``, ``term``, ``confirmed`` and ``history/`` under one cluster's root."""

    def __init__(self, transport: Transport, root: str) -> None:
        self.transport = transport
        self.root = root
        # The last ruleset decoded, by its exact bytes: a sidecar's watch delivers a version and
        # its next read returns the same bytes. One tuple, so the two threads never see half of it.
        self._last_decoded: tuple[str, Ruleset] | None = None

    @property
    def ruleset_key(self) -> str:
        return self.root + "ruleset"

    @property
    def term_key(self) -> str:
        return self.root + "term"

    @property
    def confirmed_key(self) -> str:
        return self.root + "confirmed"

    def confirmed_history_key(self, term: int) -> str:
        return f"{self.root}history/confirmed-{term:010d}"

    def history_key(self, version: int) -> str:
        return f"{self.root}history/{version:010d}"

    def term_history_key(self, term: int) -> str:
        return f"{self.root}history/term-{term:010d}"

    # --- reads ----------------------------------------------------------------------------

    def snapshot(self, kv: dict[str, Any]) -> Snapshot:
        """The ruleset in ``kv``; :class:`InvalidRecordError` unless it parses and was written by a CAS of ours."""
        rev = Revision(int(kv["mod_revision"]))
        where = f"{self.ruleset_key} (revision {rev})"
        value, last = kv.get("value", ""), self._last_decoded
        if last is not None and last[0] == value:
            rs = last[1]  # the same bytes decode to the same ruleset
        else:
            rs = decode(unb64(value), where)
            self._last_decoded = (value, rs)
        check_written_by_protocol(rs.version, int(kv.get("version", 0)), "version", where)
        return Snapshot(rs, rev)

    def term_of(self, kv: dict[str, Any], confirmed: dict[str, Any] | None = None) -> TermSnapshot:
        rev = Revision(int(kv["mod_revision"]))
        where = f"{self.term_key} (revision {rev})"
        term = decode_term(unb64(kv.get("value", "")), where)
        check_written_by_protocol(term.term, int(kv.get("version", 0)), "term", where)
        if confirmed is None:
            return TermSnapshot(term, rev)
        crev = Revision(int(confirmed["mod_revision"]))
        where = f"{self.confirmed_key} (revision {crev})"
        confirmation = decode_confirmation(unb64(confirmed.get("value", "")), where)
        check_confirmation(term, confirmation, where)
        return TermSnapshot(term, rev, confirmation, crev)

    def read(self) -> Snapshot:
        kvs, _ = self.transport.range(self.ruleset_key)
        if not kvs:
            raise NotInitializedError(f"no ruleset at {self.ruleset_key}: run `pgcohort init` for this cluster first")
        return self.snapshot(kvs[0])

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        """The ruleset, the term and its confirmation at one revision: one read-only (linearizable) transaction."""
        ruleset, term, confirmed = self.raw("run `pgcohort init` for this cluster first")
        snap, now = self.snapshot(ruleset), self.term_of(term, confirmed)
        check_pair(snap.ruleset, now.term, f"{self.root} (revision {snap.revision})")
        return snap, now

    def raw(self, if_missing: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """The ruleset's, the term's and the confirmation's kvs at one revision (one linearizable transaction).

        The confirmation is None in a cluster initialized before confirmations existed.
        """
        gets = [get(self.ruleset_key), get(self.term_key), get(self.confirmed_key)]
        resp = self.transport.request("kv/txn", {"compare": [], "success": gets, "failure": []})
        ruleset, term, confirmed = branch_kvs(resp, 0), branch_kvs(resp, 1), branch_kvs(resp, 2)
        if not ruleset or not term:
            raise NotInitializedError(f"no ruleset or term under {self.root}: {if_missing}")
        return ruleset[0], term[0], (confirmed[0] if confirmed else None)

    def history(self) -> list[tuple[Revision, Ruleset]]:
        return self.audit("history/0", decode)  # version keys, not history/term-*

    def term_history(self) -> list[tuple[Revision, Term]]:
        return self.audit("history/term-", decode_term)

    def confirmation_history(self) -> list[tuple[Revision, Confirmation]]:
        return self.audit("history/confirmed-", decode_confirmation)

    def audit(
        self, prefix: str, decoder: Callable[[bytes, str], T], *, skip_invalid: bool = False
    ) -> list[tuple[Revision, T]]:
        kvs, _ = self.transport.range(self.root + prefix, prefix=True)
        out = []
        for kv in kvs:
            rev = Revision(int(kv["mod_revision"]))
            key = unb64(kv["key"]).decode()
            try:
                out.append((rev, decoder(unb64(kv.get("value", "")), f"{key} (revision {rev})")))
            except InvalidRecordError as e:
                if not skip_invalid:
                    raise InvalidRecordError(str(e), record="history") from None
        return out

    # --- writes ---------------------------------------------------------------------------

    def _cas(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], key: str, history_key: str, writer: str
    ) -> Revision | _Lost:
        """Send one CAS; its revision if it (or an earlier, unconfirmed attempt of ours) is the current value.

        Otherwise, what the failure branch read in the same round trip: the key's value now,
        and this write's own history entry if an attempt of ours committed and was superseded.
        """
        _need_writer(writer)
        ok, resp = self.transport.txn(compare, success, [get(key), get(history_key)])
        if ok:
            return Revision(int(resp["header"]["revision"]))
        now, ours = branch_kvs(resp, 0), branch_kvs(resp, 1)
        if now and writer_of(now[0]) == writer:
            return Revision(int(now[0]["mod_revision"]))
        return _Lost(now[0] if now else None, ours[0] if ours and writer_of(ours[0]) == writer else None)

    def first(self, ruleset: Ruleset, term: Term) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The compares and puts that create a cluster: none of its records exist yet; the ruleset, the term and
        the term's confirmation (init names the running primary, so its term is confirmed from the start; the
        sidecar beside it adds its timeline at its first round), each with its history entry."""
        value, term_value = encode(ruleset), encode_term(term)
        confirmation = encode_confirmation(Confirmation(term.term, term.primary, None, None, term.decided_by,
                                                        term.at, term.writer))  # fmt: skip
        success = [
            put(self.ruleset_key, value),
            put(self.history_key(ruleset.version), value),
            put(self.term_key, term_value),
            put(self.term_history_key(term.term), term_value),
            put(self.confirmed_key, confirmation),
            put(self.confirmed_history_key(term.term), confirmation),
        ]
        return [absent(self.ruleset_key), absent(self.term_key), absent(self.confirmed_key)], success

    def init(self, ruleset: Ruleset, term: Term) -> Revision:
        compare, success = self.first(ruleset, term)
        done = self._cas(compare, success, self.ruleset_key, self.history_key(ruleset.version), ruleset.writer)
        if not isinstance(done, _Lost):
            return done
        if done.ours is not None:
            return Revision(int(done.ours["mod_revision"]))  # ours, since changed by others: initialized
        raise RefusedError(
            f"refused init: cluster {self.root} is already initialized; nothing was changed. "
            "Use `pgcohort status` to see it"
        )

    def commit(self, expected: Revision, ruleset: Ruleset, *, term_revision: Revision | None = None) -> Revision:
        compare = [mod_equals(self.ruleset_key, expected)]
        if term_revision is not None:
            compare.append(mod_equals(self.term_key, term_revision))
        history, value = self.history_key(ruleset.version), encode(ruleset)
        success = [put(self.ruleset_key, value), put(history, value)]
        done = self._cas(compare, success, self.ruleset_key, history, ruleset.writer)
        if not isinstance(done, _Lost):
            return done
        if done.current is None:
            raise NotInitializedError(f"no ruleset at {self.ruleset_key}: it was deleted; run `pgcohort init`")
        current = Revision(int(done.current["mod_revision"]))
        if done.ours is not None:
            latest = self.snapshot(done.current).ruleset
            raise SupersededError(
                f"version {ruleset.version} ({ruleset.reason}) was committed at revision "
                f"{done.ours['mod_revision']}, then superseded by version {latest.version} ({latest.reason}, "
                f"by {latest.changed_by})",
                committed_revision=int(done.ours["mod_revision"]),
                current_revision=current,
            )
        raise ConflictError(
            f"the ruleset (or term) changed since revision {expected} (ruleset now {current}); nothing was written. "
            "Re-read and re-validate",
            current_revision=current,
        )

    def put_term(self, ruleset_revision: Revision, based_on: TermSnapshot, term: Term) -> Revision:
        term_revision = based_on.revision
        compare = [
            mod_equals(self.ruleset_key, ruleset_revision),
            mod_equals(self.term_key, term_revision),
            mod_equals(self.confirmed_key, based_on.confirmation_revision),
        ]
        history = self.term_history_key(term.term)
        success = [put(self.term_key, encode_term(term)), put(history, encode_term(term))]
        done = self._cas(compare, success, self.term_key, history, term.writer)
        if not isinstance(done, _Lost):
            return done
        if done.ours is not None:
            latest = self.term_of(done.current).term if done.current else None
            by = f"term {latest.term} (primary {latest.primary}, decided by {latest.decided_by})" if latest else "?"
            raise SupersededError(
                f"term {term.term} naming {term.primary} was committed at revision {done.ours['mod_revision']}, "
                f"then superseded by {by}",
                committed_revision=int(done.ours["mod_revision"]),
                current_revision=int(done.current["mod_revision"]) if done.current else None,
            )
        raise ConflictError(
            f"the ruleset, term or confirmation changed since the survey (ruleset revision {ruleset_revision}, "
            f"term revision {term_revision}); no term was written. Re-read and survey again"
        )

    def confirm(self, based_on: TermSnapshot, confirmation: Confirmation) -> Revision:
        """Record that the term read in ``based_on`` was seen running, iff neither it nor its confirmation moved."""
        if confirmation.term != based_on.term.term or confirmation.primary != based_on.term.primary:
            raise InvalidInputError("internal: a confirmation names the term it was based on")
        compare = [
            mod_equals(self.term_key, based_on.revision),
            mod_equals(self.confirmed_key, based_on.confirmation_revision),
        ]
        history, value = self.confirmed_history_key(confirmation.term), encode_confirmation(confirmation)
        done = self._cas(compare, [put(self.confirmed_key, value), put(history, value)], self.confirmed_key,
                         history, confirmation.writer)  # fmt: skip
        if not isinstance(done, _Lost):
            return done
        raise ConflictError(
            f"the term or its confirmation changed since term {based_on.term.term} was read; nothing was written. "
            "Re-read before confirming"
        )


@dataclass(frozen=True)
class _Lost:
    """A CAS whose compare failed and whose value is not ours now."""

    current: dict[str, Any] | None  # the key's value now
    ours: dict[str, Any] | None  # our history entry: an earlier attempt committed, then was superseded


def _need_writer(writer: str) -> None:
    if not writer:
        raise InvalidInputError("internal: every value written to etcd needs a writer id")
