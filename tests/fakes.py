"""Test doubles that implement pgcohort's seams by delegating to the real thing.

Subclass and override the one method a test needs to hold, delay or falsify; everything
else is the real store or node. mypy checks them against :class:`pgcohort.seams.Store` and
:class:`pgcohort.seams.Node` wherever they are passed, so a fake cannot drift from the seam.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

from pgcohort.core.decision import GateDecision
from pgcohort.core.failover import Position
from pgcohort.core.node import NodeRecord
from pgcohort.core.rules import Member
from pgcohort.core.ruleset import Ruleset
from pgcohort.core.steps import Desired
from pgcohort.core.term import Confirmation, Term, Timeline
from pgcohort.seams import (
    Node,
    Observation,
    Registration,
    Revision,
    SettingWriter,
    Snapshot,
    Store,
    StoreStats,
    TermSnapshot,
    Watch,
)


class DelegatingStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root

    def read(self) -> Snapshot:
        return self.store.read()

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        return self.store.read_both()

    def init(self, ruleset: Ruleset, term: Term) -> Revision:
        return self.store.init(ruleset, term)

    def commit(self, expected: Revision, ruleset: Ruleset, *, term_revision: Revision | None = None) -> Revision:
        return self.store.commit(expected, ruleset, term_revision=term_revision)

    def put_term(self, ruleset_revision: Revision, based_on: TermSnapshot, term: Term) -> Revision:
        return self.store.put_term(ruleset_revision, based_on, term)

    def confirm(self, based_on: TermSnapshot, confirmation: Confirmation) -> Revision:
        return self.store.confirm(based_on, confirmation)

    def history(self) -> list[tuple[Revision, Ruleset]]:
        return self.store.history()

    def term_history(self) -> list[tuple[Revision, Term]]:
        return self.store.term_history()

    def confirmation_history(self) -> list[tuple[Revision, Confirmation]]:
        return self.store.confirmation_history()

    def nodes(self) -> dict[str, NodeRecord]:
        return self.store.nodes()

    def registration(self, name: str, ttl: int) -> Registration:
        return self.store.registration(name, ttl)

    def record_decision(self, d: GateDecision) -> None:
        self.store.record_decision(d)

    def decision(self, name: str) -> GateDecision | None:
        return self.store.decision(name)

    def watch(self, since: Revision | None = None) -> Watch:
        return self.store.watch(since)

    def stats(self) -> StoreStats:
        return self.store.stats()


class DelegatingNode:
    def __init__(self, node: Node) -> None:
        self.node = node

    def observe(self) -> Observation:
        return self.node.observe()

    def setting_lock(self) -> AbstractContextManager[SettingWriter]:
        return self.node.setting_lock()

    def wait_in_force(self, desired: Desired, *, timeout: float) -> None:
        self.node.wait_in_force(desired, timeout=timeout)

    def barrier(self, revision: int, *, timeout: float) -> int:
        return self.node.barrier(revision, timeout=timeout)

    def acknowledged(self, lsn: int) -> Mapping[str, int]:
        return self.node.acknowledged(lsn)

    def revoke(self, *, timeout: float = 10.0, candidate: Member | None = None) -> Position:
        return self.node.revoke(timeout=timeout, candidate=candidate)

    def release(self) -> None:
        self.node.release()

    def timeline(self) -> Timeline:
        return self.node.timeline()

    def follow(self, primary: Member) -> None:
        self.node.follow(primary)

    def set_eligible(self, eligible: bool) -> bool:
        return self.node.set_eligible(eligible)

    def promote(self, *, timeout: int = 60, setting: Desired | None = None) -> None:
        self.node.promote(timeout=timeout, setting=setting)

    def prepare(self, setting: Desired, *, timeout: int = 60) -> None:
        self.node.prepare(setting, timeout=timeout)

    def close(self) -> None:
        self.node.close()
