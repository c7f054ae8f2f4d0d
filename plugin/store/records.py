"""The ruleset and the term: linearizable reads and compare-and-swap writes with their audit log.

Every write is one transaction that compares ``mod_revision`` and writes the ``history/``
entry beside the value. A write whose answer was lost is retried unchanged (see
:mod:`pgcohort.store.transport`); when the compare then fails, the failure branch reads the
current value *and* this write's history entry in the same round trip, so an earlier
attempt of ours is recognised by its writer id even after someone else superseded it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pgcohort.core.ruleset import Ruleset, Term, decode, decode_term, encode, encode_term
from pgcohort.errors import (
    ConflictError,
    InvalidInputError,
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
        rev = Revision(int(kv["mod_revision"]))
        return Snapshot(decode(unb64(kv.get("value", "")), f"{self.ruleset_key} (revision {rev})"), rev)

    def _term(self, kv: dict[str, Any]) -> TermSnapshot:
        rev = Revision(int(kv["mod_revision"]))
        return TermSnapshot(decode_term(unb64(kv.get("value", "")), f"{self.term_key} (revision {rev})"), rev)

    def read(self) -> Snapshot:
        kvs, _ = self.transport.range(self.ruleset_key)
        if not kvs:
            raise NotInitializedError(f"no ruleset at {self.ruleset_key}: run `pgcohort init` for this cluster first")
        return self.snapshot(kvs[0])

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        """The ruleset and the term at one revision: one read-only (linearizable) transaction."""
        resp = self.transport.request(
            "kv/txn", {"compare": [], "success": [get(self.ruleset_key), get(self.term_key)], "failure": []}
        )
        ruleset, term = branch_kvs(resp, 0), branch_kvs(resp, 1)
        if not ruleset or not term:
            raise NotInitializedError(
                f"no ruleset or term under {self.root}: run `pgcohort init` for this cluster first"
            )
        return self.snapshot(ruleset[0]), self._term(term[0])

    def history(self) -> list[tuple[Revision, Ruleset]]:
        return self._audit("history/0", decode)  # version keys, not history/term-*

    def term_history(self) -> list[tuple[Revision, Term]]:
        return self._audit("history/term-", decode_term)

    def _audit(self, prefix: str, decoder: Callable[[bytes, str], T]) -> list[tuple[Revision, T]]:
        kvs, _ = self.transport.range(self.root + prefix, prefix=True)
        out = []
        for kv in kvs:
            rev = Revision(int(kv["mod_revision"]))
            key = unb64(kv["key"]).decode()
            out.append((rev, decoder(unb64(kv.get("value", "")), f"{key} (revision {rev})")))
        return out

    # --- writes ---------------------------------------------------------------------------

    def init(self, ruleset: Ruleset, term: Term) -> Revision:
        _need_writer(ruleset.writer)
        success = [
            put(self.ruleset_key, encode(ruleset)),
            put(self.history_key(ruleset.version), encode(ruleset)),
            put(self.term_key, encode_term(term)),
            put(self.term_history_key(term.term), encode_term(term)),
        ]
        compare = [absent(self.ruleset_key), absent(self.term_key)]
        ok, resp = self.transport.txn(compare, success, [get(self.history_key(ruleset.version))])
        if ok:
            return Revision(int(resp["header"]["revision"]))
        ours = branch_kvs(resp, 0)
        if ours and writer_of(ours[0]) == ruleset.writer:
            return Revision(int(ours[0]["mod_revision"]))  # an earlier, unconfirmed attempt of ours
        raise RefusedError(
            f"refused init: cluster {self.root} is already initialized; nothing was changed. "
            "Use `pgcohort status` to see it"
        )

    def commit(self, expected: Revision, ruleset: Ruleset, *, term_revision: Revision | None = None) -> Revision:
        _need_writer(ruleset.writer)
        compare = [mod_equals(self.ruleset_key, expected)]
        if term_revision is not None:
            compare.append(mod_equals(self.term_key, term_revision))
        success = [put(self.ruleset_key, encode(ruleset)), put(self.history_key(ruleset.version), encode(ruleset))]
        failure = [get(self.ruleset_key), get(self.history_key(ruleset.version))]
        ok, resp = self.transport.txn(compare, success, failure)
        if ok:
            return Revision(int(resp["header"]["revision"]))
        now, ours = branch_kvs(resp, 0), branch_kvs(resp, 1)
        if not now:
            raise NotInitializedError(f"no ruleset at {self.ruleset_key}: it was deleted; run `pgcohort init`")
        current = Revision(int(now[0]["mod_revision"]))
        if writer_of(now[0]) == ruleset.writer:
            return current  # an earlier, unconfirmed attempt of ours committed
        if ours and writer_of(ours[0]) == ruleset.writer:
            latest = self.snapshot(now[0]).ruleset
            raise SupersededError(
                f"version {ruleset.version} ({ruleset.reason}) was committed at revision {ours[0]['mod_revision']}, "
                f"then superseded by version {latest.version} ({latest.reason}, by {latest.changed_by})",
                committed_revision=int(ours[0]["mod_revision"]),
                current_revision=current,
            )
        raise ConflictError(
            f"the ruleset (or term) changed since revision {expected} (ruleset now {current}); nothing was written. "
            "Re-read and re-validate",
            current_revision=current,
        )

    def put_term(self, ruleset_revision: Revision, term_revision: Revision, term: Term) -> Revision:
        _need_writer(term.writer)
        compare = [mod_equals(self.ruleset_key, ruleset_revision), mod_equals(self.term_key, term_revision)]
        success = [put(self.term_key, encode_term(term)), put(self.term_history_key(term.term), encode_term(term))]
        failure = [get(self.term_key), get(self.term_history_key(term.term))]
        ok, resp = self.transport.txn(compare, success, failure)
        if ok:
            return Revision(int(resp["header"]["revision"]))
        now, ours = branch_kvs(resp, 0), branch_kvs(resp, 1)
        if now and writer_of(now[0]) == term.writer:
            return Revision(int(now[0]["mod_revision"]))
        if ours and writer_of(ours[0]) == term.writer:
            latest = self._term(now[0]).term if now else None
            by = f"term {latest.term} (primary {latest.primary}, decided by {latest.decided_by})" if latest else "?"
            raise SupersededError(
                f"term {term.term} naming {term.primary} was committed at revision {ours[0]['mod_revision']}, "
                f"then superseded by {by}",
                committed_revision=int(ours[0]["mod_revision"]),
                current_revision=int(now[0]["mod_revision"]) if now else None,
            )
        raise ConflictError(
            f"the ruleset or term changed since the survey (ruleset revision {ruleset_revision}, term "
            f"revision {term_revision}); no term was written. Re-read and survey again"
        )


def _need_writer(writer: str) -> None:
    if not writer:
        raise InvalidInputError("internal: every value written to etcd needs a writer id")
