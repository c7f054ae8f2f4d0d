"""``synchronous_standby_names``: written under an advisory lock with ALTER SYSTEM, and when it is in force.

* :meth:`Setting.lock` holds a **PostgreSQL advisory lock** on the node's session; its writer
  sets the value with ``ALTER SYSTEM`` and ``pg_reload_conf()``. The caller reads the committed
  ruleset *inside that hold*; holds are totally ordered and committed revisions only grow, so
  two sidecars that both believe they are beside the primary never regress the setting.
* :meth:`Setting.wait_in_force` returns once every session shows the setting and every
  connected WAL sender reports the matching ``sync_state`` (plus a ``CHECKPOINT`` when the
  previous value was empty: the checkpointer's copy decides whether commits wait at all).
* Every write, even one that finds the value in place, starts a new **apply** (``epoch``): a
  barrier belongs to one apply (:mod:`.barrier`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from pgcohort.core.steps import Desired
from pgcohort.errors import NotInForceError
from pgcohort.postgres.session import Connection, Session, translated

LOCK_KEY = 0x7067636F686F7274  # "pgcohort" in ASCII: the advisory lock serialising writes


class Setting:
    """The setting on one server: its writes (counted as applies) and whether it is in force."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.epoch = 0  # applies so far: a barrier belongs to one
        self._checkpoint_due = False

    @contextmanager
    def lock(self) -> Iterator[SettingWriter]:
        """Hold the advisory lock that serialises writers of the setting on this server (at most LOCK_TIMEOUT)."""
        with translated("lock synchronous_standby_names", self.session.dsn):
            conn = self.session.conn()
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
                try:
                    yield SettingWriter(self, conn)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg.OperationalError:
                self.session.close()  # a broken session also released the lock on the server
                raise

    def write(self, conn: Connection, desired: Desired) -> None:
        """ALTER SYSTEM + reload, on the locked session; a new apply even when the value is in place."""
        self.epoch += 1
        row = conn.execute("SELECT current_setting('synchronous_standby_names')").fetchone()
        before = str(row[0]) if row else ""
        if before != desired.setting:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(desired.setting))
            )
            conn.execute("SELECT pg_reload_conf()")
            self._checkpoint_due = self._checkpoint_due or not before.strip()

    def in_force(self, desired: Desired) -> bool:
        """True when this session shows the setting and every WAL sender agrees with it.

        ``pg_reload_conf()`` signals the postmaster, which reloads its configuration and only
        then signals every child, this session included (it reloads before its next query). So
        once this session shows the value, the postmaster has it and every new session shows it
        too (``tests/test_postgres.py`` checks that with a new session). One query per poll, no
        new backend.
        """
        ((setting, senders),) = self.session.query(
            "read synchronous_standby_names and pg_stat_replication",
            "SELECT current_setting('synchronous_standby_names'), coalesce(json_agg(json_build_array("
            "application_name, state, sync_state, sync_priority)), '[]'::json) FROM pg_stat_replication",
        )
        if setting != desired.setting:
            return False
        listed = {n.lower() for n in desired.standbys}
        for name, state, sync_state, priority in senders:
            if state != "streaming":
                continue
            counted = sync_state in ("sync", "quorum", "potential") and int(priority or 0) > 0
            if counted != (str(name).lower() in listed):
                return False
        return True

    def wait_in_force(self, desired: Desired, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.in_force(desired):
            if time.monotonic() > deadline:
                raise NotInForceError(
                    f"synchronous_standby_names = {desired.setting!r} (revision {desired.revision}) was written "
                    f"but PostgreSQL did not show it in force within {timeout:g}s; the sidecar will retry"
                )
            time.sleep(0.001)
        if self._checkpoint_due:
            self.session.query("checkpoint", "CHECKPOINT")  # the checkpointer now knows sync standbys are defined
            self._checkpoint_due = False

    def shown_by_new_session(self) -> str:
        with translated("show synchronous_standby_names", self.session.dsn), self.session.connect() as conn:
            row = conn.execute("SHOW synchronous_standby_names").fetchone()
            return str(row[0]) if row else ""


class SettingWriter:
    """What :meth:`Setting.lock` yields: writes through the locked session."""

    def __init__(self, setting: Setting, conn: Connection) -> None:
        self._setting, self._conn = setting, conn

    def write(self, desired: Desired) -> None:
        self._setting.write(self._conn, desired)
