"""The ruleset and the term: linearizable reads and compare-and-swap writes with their audit log.

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

from pgcohort.core.ruleset import (
    Ruleset,
    Term,
    check_pair,
    check_written_by_protocol,
    decode,
    decode_term,
    encode,
    encode_term,
    restoration,
    term_restoration,
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
    """``ruleset``, ``term`` and ``history/`` under one cluster's root."""

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

    def _term(self, kv: dict[str, Any]) -> TermSnapshot:
        rev = Revision(int(kv["mod_revision"]))
        where = f"{self.term_key} (revision {rev})"
        term = decode_term(unb64(kv.get("value", "")), where)
        check_written_by_protocol(term.term, int(kv.get("version", 0)), "term", where)
        return TermSnapshot(term, rev)

    def read(self) -> Snapshot:
        kvs, _ = self.transport.range(self.ruleset_key)
        if not kvs:
            raise NotInitializedError(f"no ruleset at {self.ruleset_key}: run `pgcohort init` for this cluster first")
        return self.snapshot(kvs[0])

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        """The ruleset and the term at one revision: one read-only (linearizable) transaction."""
        ruleset, term = self._raw_both("run `pgcohort init` for this cluster first")
        snap, now = self.snapshot(ruleset), self._term(term)
        check_pair(snap.ruleset, now.term, f"{self.root} (revision {snap.revision})")
        return snap, now

    def _raw_both(self, if_missing: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ruleset's and the term's kvs at one revision (one read-only, linearizable transaction)."""
        resp = self.transport.request(
            "kv/txn", {"compare": [], "success": [get(self.ruleset_key), get(self.term_key)], "failure": []}
        )
        ruleset, term = branch_kvs(resp, 0), branch_kvs(resp, 1)
        if not ruleset or not term:
            raise NotInitializedError(f"no ruleset or term under {self.root}: {if_missing}")
        return ruleset[0], term[0]

    def history(self) -> list[tuple[Revision, Ruleset]]:
        return self._audit("history/0", decode)  # version keys, not history/term-*

    def term_history(self) -> list[tuple[Revision, Term]]:
        return self._audit("history/term-", decode_term)

    def _audit(
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

    # --- repair -----------------------------------------------------------------------------

    def restore(self, *, actor: str, writer: str, now: str) -> list[str]:
        """Where the ruleset or term is invalid, commit its newest valid history entry again (one CAS on both).

        Returns what was restored. RefusedError if both records are valid (nothing is written).
        """
        rs_kv, term_kv = self._raw_both(
            "nothing to restore (a deleted key cannot be restored through the protocol; run `pgcohort init` "
            "for a new cluster)"
        )
        term: Term | None = None
        problems: dict[str, str] = {}
        try:
            term = self._term(term_kv).term
        except InvalidRecordError as e:
            problems["term"] = str(e)
        try:
            snap = self.snapshot(rs_kv)
            if term is not None:
                check_pair(snap.ruleset, term, self.root)
        except InvalidRecordError as e:
            problems["ruleset"] = str(e)
        if not problems:
            raise RefusedError(
                f"nothing to restore: the ruleset and term under {self.root} are valid; nothing was changed"
            )
        success, done = [], []
        if term is None:
            terms = [t for _, t in self._audit("history/term-", decode_term, skip_invalid=True)]
            term = term_restoration(terms, int(term_kv.get("version", 0)), decided_by=actor, now=now, writer=writer)
            success += [put(self.term_key, encode_term(term)), put(self.term_history_key(term.term), encode_term(term))]
            done.append(f"term {term.term} (primary {term.primary}, from the term history)")
        if "ruleset" in problems or "term" in problems:
            try:
                check_pair(
                    self.snapshot(rs_kv).ruleset, term, self.root
                )  # the ruleset may be fine with the restored term
            except InvalidRecordError:
                rulesets = [r for _, r in self._audit("history/0", decode, skip_invalid=True)]
                rs = restoration(
                    rulesets,
                    term,
                    int(rs_kv.get("version", 0)),
                    changed_by=actor,
                    now=now,
                    writer=writer,
                    problem=problems.get("ruleset", problems.get("term", "")),
                )
                success += [put(self.ruleset_key, encode(rs)), put(self.history_key(rs.version), encode(rs))]
                done.insert(0, f"ruleset version {rs.version}: {rs.show()} ({rs.reason})")
        compare = [
            mod_equals(self.ruleset_key, int(rs_kv["mod_revision"])),
            mod_equals(self.term_key, int(term_kv["mod_revision"])),
        ]
        ok, _ = self.transport.txn(compare, success, [])
        if not ok:
            raise ConflictError("the ruleset or term changed while restoring; nothing was written. Run restore again")
        return done

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

    def init(self, ruleset: Ruleset, term: Term) -> Revision:
        value, term_value = encode(ruleset), encode_term(term)
        success = [
            put(self.ruleset_key, value),
            put(self.history_key(ruleset.version), value),
            put(self.term_key, term_value),
            put(self.term_history_key(term.term), term_value),
        ]
        compare = [absent(self.ruleset_key), absent(self.term_key)]
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

    def put_term(self, ruleset_revision: Revision, term_revision: Revision, term: Term) -> Revision:
        compare = [mod_equals(self.ruleset_key, ruleset_revision), mod_equals(self.term_key, term_revision)]
        history = self.term_history_key(term.term)
        success = [put(self.term_key, encode_term(term)), put(history, encode_term(term))]
        done = self._cas(compare, success, self.term_key, history, term.writer)
        if not isinstance(done, _Lost):
            return done
        if done.ours is not None:
            latest = self._term(done.current).term if done.current else None
            by = f"term {latest.term} (primary {latest.primary}, decided by {latest.decided_by})" if latest else "?"
            raise SupersededError(
                f"term {term.term} naming {term.primary} was committed at revision {done.ours['mod_revision']}, "
                f"then superseded by {by}",
                committed_revision=int(done.ours["mod_revision"]),
                current_revision=int(done.current["mod_revision"]) if done.current else None,
            )
        raise ConflictError(
            f"the ruleset or term changed since the survey (ruleset revision {ruleset_revision}, term "
            f"revision {term_revision}); no term was written. Re-read and survey again"
        )


@dataclass(frozen=True)
class _Lost:
    """A CAS whose compare failed and whose value is not ours now."""

    current: dict[str, Any] | None  # the key's value now
    ours: dict[str, Any] | None  # our history entry: an earlier attempt committed, then was superseded


def _need_writer(writer: str) -> None:
    if not writer:
        raise InvalidInputError("internal: every value written to etcd needs a writer id")
