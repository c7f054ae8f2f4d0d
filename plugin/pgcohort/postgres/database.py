"""One member's PostgreSQL, as every adapter drives it: the :class:`pgcohort.seams.Node` methods they share.

An adapter subclasses :class:`Database` and says what its HA manager changes: where the
setting is written (plain PostgreSQL and repmgr: ALTER SYSTEM under the advisory lock;
Patroni: its configuration key), what a fence keeps and who lifts it, who promotes, and how
eligibility is published.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from pgcohort.core.failover import Position
from pgcohort.core.rules import Member
from pgcohort.core.steps import Desired
from pgcohort.core.term import Timeline
from pgcohort.postgres import fence
from pgcohort.postgres.barrier import Barriers
from pgcohort.postgres.session import Session, lsn
from pgcohort.postgres.setting import Setting, SettingWriter
from pgcohort.seams import Observation, Replication


class Database:
    """One PostgreSQL server, reached with a libpq connection string."""

    keeps_fence_values = True  # a fence keeps primary_conninfo/restore_command for follow (not under Patroni)

    def __init__(self, dsn: str, *, connect_timeout: float = 3.0) -> None:
        self.session = Session(dsn, connect_timeout=connect_timeout)
        self.setting = Setting(self.session)
        self.barriers = Barriers(self.session)

    @property
    def dsn(self) -> str:
        return self.session.dsn

    @property
    def where(self) -> str:
        """host:port of this server, for messages (never the password)."""
        return self.session.where

    def close(self) -> None:
        self.session.close()
        self.barriers.close()

    # --- reading ----------------------------------------------------------------------

    def observe(self) -> Observation:
        """Role, position, current setting and (on a primary) its replication connections: one query."""
        (row,) = self.session.query(
            "read its state",
            "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'),"
            " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,"
            " pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(),"
            " (SELECT count(*) FROM pg_stat_wal_receiver WHERE pid IS NOT NULL),"
            " (SELECT coalesce(json_agg(json_build_array(application_name, state, sync_state, sync_priority,"
            "  flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_flush_lsn(), flush_lsn)::bigint)"
            "  ORDER BY application_name), '[]'::json)"
            "  FROM pg_stat_replication WHERE NOT pg_is_in_recovery())",
        )
        in_recovery, setting, flush, received, replayed, receivers, senders = row
        if not in_recovery:
            reps = tuple(Replication(r[0], r[1] or "", r[2] or "", int(r[3] or 0), lsn(r[4]), r[5]) for r in senders)
            return Observation(True, lsn(flush) or 0, setting, reps, False)
        # For status and lag only (a failover counts what a member holds on disk: fence.held). After a
        # receiver restart the received position restarts at a segment boundary, so take the greater.
        position = max(lsn(received) or 0, lsn(replayed) or 0)
        return Observation(False, position, setting, (), bool(receivers))

    def setting_shown_by_new_session(self) -> str:
        return self.setting.shown_by_new_session()

    def timeline(self) -> Timeline:
        return fence.timeline(self.session)

    def held(self) -> Position:
        return fence.held(self.session)

    # --- the setting and the barrier ----------------------------------------------------

    def setting_lock(self) -> AbstractContextManager[SettingWriter]:
        """Hold the advisory lock serialising writers of the setting; yields a writer using ALTER SYSTEM."""
        return self.setting.lock()

    def in_force(self, desired: Desired) -> bool:
        return self.setting.in_force(desired)

    def wait_in_force(self, desired: Desired, *, timeout: float) -> None:
        self.setting.wait_in_force(desired, timeout=timeout)

    def barrier(self, revision: int, *, timeout: float) -> int:
        """A barrier for ``revision`` belonging to the latest apply (see :mod:`pgcohort.postgres.barrier`)."""
        return self.barriers.barrier(revision, self.setting.epoch, timeout=timeout)

    def acknowledged(self, at: int) -> dict[str, int]:
        return self.barriers.acknowledged(at)

    # --- failover ---------------------------------------------------------------------

    def revoke(self, *, timeout: float = 10.0, candidate: Member | None = None) -> Position:
        """Fence this standby and return what it holds (:func:`pgcohort.postgres.fence.fence`)."""
        return fence.fence(self.session, timeout=timeout, candidate=candidate, keep=self.keeps_fence_values)

    def follow(self, primary: Member) -> None:
        fence.follow(self.session, primary)

    def promote(self, *, timeout: int = 60, setting: Desired | None = None) -> None:
        fence.promote(self.session, timeout=timeout, setting=setting)

    def prepare(self, setting: Desired, *, timeout: int = 60) -> None:
        """The rule in force before the HA manager promotes this standby (:func:`pgcohort.postgres.fence.arm`)."""
        fence.arm(self.session, setting, timeout=timeout)
