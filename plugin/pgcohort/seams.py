"""The two seams of pgcohort, as Protocols, and the values that cross them.

The sidecar, the gate and the protocol functions are written against these and nothing
else, so they do not know which etcd client or which HA manager they drive (as Patroni's
``ha.py`` knows only ``AbstractDCS``). :class:`pgcohort.store.EtcdStore` implements
:class:`Store`; :class:`pgcohort.adapters.postgres.PostgresNode` implements :class:`Node`.
Tests use fakes that implement the same Protocols, checked by mypy.

Each method's docstring states its promise: what it compares, what it retries, and what
may be indeterminate. Errors are the classes of :mod:`pgcohort.errors`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NewType, Protocol

from pgcohort.core.decision import GateDecision
from pgcohort.core.failover import Position
from pgcohort.core.node import NodeRecord
from pgcohort.core.rules import Member
from pgcohort.core.ruleset import Ruleset
from pgcohort.core.steps import Desired
from pgcohort.core.term import Confirmation, Term, Timeline, confirmed, reference

Revision = NewType("Revision", int)
"""An etcd revision (a key's ``mod_revision`` or the store's header revision). It never repeats."""


@dataclass(frozen=True)
class Snapshot:
    """The committed ruleset as read, with the revision to compare against when changing it."""

    ruleset: Ruleset
    revision: Revision
    """``mod_revision`` of the ruleset key: the CAS token."""


@dataclass(frozen=True)
class TermSnapshot:
    """The committed term as read, with its ``mod_revision``, and the last confirmation with its own.

    ``confirmation`` is None (and ``confirmation_revision`` 0) only in a cluster initialized before
    confirmations existed.
    """

    term: Term
    revision: Revision
    confirmation: Confirmation | None = None
    confirmation_revision: Revision = Revision(0)

    @property
    def confirmed(self) -> bool:
        """The current term's primary was seen running as a primary."""
        return confirmed(self.term, self.confirmation)

    @property
    def reference(self) -> str:
        """The primary a failover reasons from: the last confirmed term's (:mod:`pgcohort.core.term`)."""
        return reference(self.term, self.confirmation)

    @property
    def timeline(self) -> Timeline | None:
        """The reference primary's timeline, if its sidecar has recorded it."""
        return self.confirmation.timeline if self.confirmation is not None else None


@dataclass(frozen=True)
class View:
    """What a watcher observed at ``revision``: a ruleset, or the problem with the key."""

    revision: Revision
    ruleset: Ruleset | None
    problem: str = ""


@dataclass(frozen=True)
class StoreStats:
    """Counters a metrics exporter reads (the store itself imports no metrics library)."""

    requests: int
    errors: int
    rotations: int
    watch_resyncs: int
    watch_silences: int


class Watch(Protocol):
    def __iter__(self) -> Iterator[View]:
        """Every committed ruleset in strictly increasing revision order; never the same twice.

        Survives member death, compaction (resyncs to the current ruleset) and silence.
        """
        ...

    def close(self) -> None:
        """Stop iterating; unblocks a thread waiting in ``__iter__``."""
        ...


class Registration(Protocol):
    def publish(self, record: NodeRecord) -> None:
        """Write this node's leased record (renewing or re-granting the lease). Idempotent."""
        ...

    def withdraw(self) -> None:
        """Delete this node's record."""
        ...


class Store(Protocol):
    """The pgcohort keys of one cluster. Reads are linearizable; writes are compare-and-swap."""

    root: str

    def read(self) -> Snapshot:
        """The committed ruleset. NotInitializedError if there is none; InvalidRecordError if it does not parse."""
        ...

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        """The ruleset and the term, read at one revision."""
        ...

    def init(self, ruleset: Ruleset, term: Term) -> Revision:
        """Create ruleset version 1, its history entry and term 1 if none exist (RefusedError if they do)."""
        ...

    def commit(self, expected: Revision, ruleset: Ruleset, *, term_revision: Revision | None = None) -> Revision:
        """CAS the ruleset from ``expected`` (and the term from ``term_revision``) and write history.

        Retried unchanged while the answer is ambiguous; an earlier attempt that committed is
        recognised by ``ruleset.writer``, also after it was superseded (reported as
        :class:`pgcohort.errors.SupersededError`). ConflictError: someone else committed
        first, nothing of ours was written. IndeterminateError: no definite answer in time.
        """
        ...

    def put_term(self, ruleset_revision: Revision, based_on: TermSnapshot, term: Term) -> Revision:
        """Record ``term`` iff neither the ruleset, the term nor its confirmation moved; same retry rules as commit."""
        ...

    def confirm(self, based_on: TermSnapshot, confirmation: Confirmation) -> Revision:
        """Record that ``based_on``'s term was seen running, iff neither the term nor the confirmation moved.

        ConflictError if either did (re-read first).
        """
        ...

    def history(self) -> list[tuple[Revision, Ruleset]]:
        """Every committed ruleset, oldest first."""
        ...

    def term_history(self) -> list[tuple[Revision, Term]]:
        """Every committed term, oldest first."""
        ...

    def confirmation_history(self) -> list[tuple[Revision, Confirmation]]:
        """Every recorded confirmation, oldest first."""
        ...

    def nodes(self) -> dict[str, NodeRecord]:
        """The nodes' leased status records; a malformed one carries its problem."""
        ...

    def registration(self, name: str, ttl: int) -> Registration:
        """This node's leased record, outliving a dead writer by at most ``ttl`` seconds."""
        ...

    def record_decision(self, d: GateDecision) -> None:
        """Keep the gate's last decision for ``d.candidate`` (status for people and metrics)."""
        ...

    def decision(self, name: str) -> GateDecision | None:
        """The gate's last decision for ``name``, if any parses."""
        ...

    def watch(self, since: Revision | None = None) -> Watch:
        """The committed rulesets after ``since`` (or from the current one)."""
        ...

    def stats(self) -> StoreStats: ...


@dataclass(frozen=True)
class Replication:
    """One standby as the primary sees it (pg_stat_replication)."""

    name: str
    state: str
    sync_state: str
    sync_priority: int
    flush_lsn: int | None
    lag_bytes: int | None


@dataclass(frozen=True)
class Observation:
    """What a node's PostgreSQL reports about itself."""

    primary: bool
    lsn: int  # primary: current WAL flush position; standby: max(received, replayed) (status only, never a vote)
    setting: str
    replication: tuple[Replication, ...]
    receiving: bool  # standby: a WAL receiver is running


class SettingWriter(Protocol):
    def write(self, desired: Desired) -> None:
        """Make ``desired`` the setting the primary enforces (does not wait for it to be in force)."""
        ...


@dataclass(frozen=True)
class Hook:
    """How an HA manager runs ``pgcohort gate`` before it promotes, where that differs from Patroni's ``pre_promote``.

    The defaults are Patroni's: the hook's output is read to its end, a veto makes the HA manager
    pick again among members it ranks itself, and whatever it promotes gets the rule from
    Patroni's configuration. Each adapter says which of these does not hold
    (:class:`pgcohort.assembly.Adapter` ``hook``); the gate and the CLI act on these
    capabilities only, never on an adapter's name.
    """

    one_line: bool = False
    """Only the first line of the hook's stdout is read, then the pipe is closed (repmgr's
    ``failover_validation_command``): ``pgcohort gate`` writes its report on stderr and one line on
    stdout, as its very last action, so that no later write meets a closed pipe."""

    hand_over: bool = False
    """The HA manager promotes the candidate after the hook allows, with whatever setting the candidate
    holds, and repoints the other standbys itself only later (repmgr): before allowing, the gate puts the
    rule rendered for the candidate in force on it and repoints the members it surveyed to it
    (:func:`pgcohort.gate.hand_over`), so its first commit as a primary waits for the rule."""

    steer: bool = False
    """After a veto the HA manager elects the same candidate again (repmgr: highest received LSN, then
    priority, then node id), so a veto alone only buys time: when the gate refuses the candidate but the
    failover rule allows another member, it promotes that member itself through the same path as
    ``pgcohort failover`` and still vetoes (:func:`pgcohort.gate.steer`); the HA manager then follows it."""


class Node(Protocol):
    """One member's database as the sidecar and the gate drive it, whatever the HA manager.

    Implemented for plain PostgreSQL (:mod:`pgcohort.adapters.postgres`), for a node managed by
    Patroni (:mod:`pgcohort.adapters.patroni`) and by repmgr (:mod:`pgcohort.adapters.repmgr`). Every method
    raises :class:`pgcohort.errors.PostgresError` subclasses, never a driver's exception.
    """

    def observe(self) -> Observation:
        """Role, position, the setting in effect, and (on a primary) its standbys."""
        ...

    def setting_lock(self) -> AbstractContextManager[SettingWriter]:
        """Serialise writers of ``synchronous_standby_names`` beside this primary.

        Lock holds are totally ordered, so a caller that reads the committed ruleset *inside*
        the hold and writes what it renders can never regress the setting to an older
        revision, even with two writers beside one primary.
        """
        ...

    def wait_in_force(self, desired: Desired, *, timeout: float) -> None:
        """Return once PostgreSQL enforces ``desired`` (NotInForceError after ``timeout``)."""
        ...

    def barrier(self, revision: int, *, timeout: float) -> int:
        """A synchronous commit made after the latest write through :meth:`setting_lock`; returns its LSN.

        A barrier belongs to one revision and one apply: one left pending for another revision,
        or from before the latest write, is never returned. BarrierPendingError if not
        acknowledged within ``timeout`` (the commit keeps waiting; the next call for the same
        revision, with no write in between, waits for the same commit).
        """
        ...

    def acknowledged(self, lsn: int) -> Mapping[str, int]:
        """Standbys (by application_name) whose reported flush position is at or past ``lsn``."""
        ...

    def revoke(self, *, timeout: float = 10.0, candidate: Member | None = None) -> Position:
        """Fence this standby, then return what it holds on disk: the end of valid WAL in its pg_wal.

        The fence: its WAL receiver stopped, and seen stopped in ``pg_stat_wal_receiver`` (or
        streaming from ``candidate``, the member about to be promoted, which Patroni points
        standbys at while it holds the leader key), and archive restore unable to advance it.
        Only then is the position read, so it cannot grow behind the survey's back with WAL
        the old primary could count as acknowledged. PostgresUnreachableError if the fence
        does not hold in ``timeout`` or the WAL cannot be read (the caller fails closed).
        NotStandbyError (carrying the position) if the server is not in recovery: a primary.
        """
        ...

    def release(self) -> None:
        """Lift this member's fence where the HA manager repoints standbys itself (Patroni): after a refused
        failover, and on the promoted member. A no-op for plain PostgreSQL, where two orchestrators may
        survey at once and the next allowed failover repoints every survivor (:meth:`follow`)."""
        ...

    def follow(self, primary: Member) -> None:
        """Undo :meth:`revoke`: receive WAL from ``primary`` (the new one). A no-op where the HA manager repoints."""
        ...

    def timeline(self) -> Timeline:
        """This primary's timeline and its ancestry (for the term's confirmation)."""
        ...

    def promote(self, *, timeout: int = 60, setting: Desired | None = None) -> None:
        """Promote and wait until it accepts writes; ``setting`` (rendered for this node from the committed
        ruleset) is in force before the promotion, so its first commit already waits for the rule."""
        ...

    def prepare(self, setting: Desired, *, timeout: int = 60) -> None:
        """Put ``setting`` (rendered for this standby from the committed ruleset) in force before the HA manager
        promotes it (:attr:`Hook.hand_over`), so that its first commit as a primary already waits for the rule."""
        ...

    def set_eligible(self, eligible: bool) -> bool:
        """Tell the HA manager whether this node may be promoted (a cohort member); True if that changed anything."""
        ...

    def close(self) -> None: ...
