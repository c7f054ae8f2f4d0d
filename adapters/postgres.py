"""The PostgreSQL adapter: the only module that imports psycopg.

What it promises (measured on PostgreSQL 15, see docs/POSTGRES.md):

* :meth:`PostgresNode.apply` writes ``synchronous_standby_names`` with ``ALTER SYSTEM`` and
  ``pg_reload_conf()`` **under a PostgreSQL advisory lock**, rendering the value from a
  callback that reads the committed ruleset *inside that lock hold*. Lock holds are
  totally ordered and committed revisions only grow, so two sidecars that both believe
  they are beside the primary can never regress the setting to an older revision.
  It returns only once the setting is **in force**: a new session shows it and every
  connected WAL sender reports the matching ``sync_state`` (plus a ``CHECKPOINT`` when
  the previous value was empty, because the checkpointer's copy decides whether commits
  wait at all).
* :meth:`PostgresNode.barrier` commits a transactional WAL message with
  ``synchronous_commit = on`` and returns only once the standbys acknowledged it. The wait
  is bounded on the client side, never by cancelling (a cancelled wait reports the commit
  as successful although no standby has it). A barrier still waiting is reused, not
  duplicated.
* :meth:`PostgresNode.revoke` stops a standby receiving and returns its final position;
  :meth:`PostgresNode.promote` promotes and waits.
* Every psycopg error becomes :class:`PostgresUnreachableError` in one function.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from plugin.core.failover import parse_lsn
from plugin.errors import BarrierPendingError, NotInForceError, PgcohortError, PostgresUnreachableError

LOCK_KEY = 0x7067636F686F7274  # "pgcohort" in ASCII: the advisory lock serialising writes
BARRIER_CHANNEL = "pgcohort-barrier"


@dataclass(frozen=True)
class Desired:
    """What the primary must enforce: a setting rendered from one committed revision."""

    revision: int
    setting: str
    standbys: frozenset[str]  # the names the setting lists (the rule's electorate)


@dataclass(frozen=True)
class Replication:
    """One row of pg_stat_replication."""

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
    lsn: int  # primary: current WAL flush position; standby: max(received, replayed)
    setting: str
    replication: tuple[Replication, ...]
    receiving: bool  # standby: a WAL receiver is running


def _lsn(value: Any) -> int | None:
    return None if value is None else parse_lsn(str(value))


@contextmanager
def _translated(what: str, dsn: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise PostgresUnreachableError(f"PostgreSQL ({_where(dsn)}) failed to {what}: {detail}") from None


def _where(dsn: str) -> str:
    parts = dict(p.split("=", 1) for p in dsn.split() if "=" in p)
    return f"{parts.get('host', 'local')}:{parts.get('port', '5432')}"


class PostgresNode:
    """One PostgreSQL server, reached with a libpq connection string."""

    def __init__(self, dsn: str, *, connect_timeout: float = 3.0) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._barrier: threading.Thread | None = None
        self._barrier_result: dict[str, Any] = {}

    # --- connections ----------------------------------------------------------------

    def _connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.dsn,
            autocommit=autocommit,
            connect_timeout=max(1, int(self.connect_timeout)),
            application_name="pgcohort",
        )

    def _session(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _query(self, what: str, query: sql.Composable | str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with _translated(what, self.dsn):
            try:
                cur = self._session().execute(query, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError:
                self.close()
                raise

    # --- reading ----------------------------------------------------------------------

    def observe(self) -> Observation:
        """Role, position, current setting and (on a primary) its replication connections."""
        (row,) = self._query(
            "read its state",
            "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'),"
            " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn() END,"
            " pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(),"
            " (SELECT count(*) FROM pg_stat_wal_receiver WHERE pid IS NOT NULL)",
        )
        in_recovery, setting, flush, received, replayed, receivers = row
        if not in_recovery:
            rows = self._query(
                "read pg_stat_replication",
                "SELECT application_name, state, sync_state, sync_priority, flush_lsn,"
                " pg_wal_lsn_diff(pg_current_wal_flush_lsn(), flush_lsn)::bigint"
                " FROM pg_stat_replication ORDER BY application_name",
            )
            reps = tuple(Replication(r[0], r[1] or "", r[2] or "", int(r[3] or 0), _lsn(r[4]), r[5]) for r in rows)
            return Observation(True, _lsn(flush) or 0, setting, reps, False)
        # A standby's received position restarts at a segment boundary after its receiver
        # restarts, possibly behind what it replayed: use the greater.
        lsn = max(_lsn(received) or 0, _lsn(replayed) or 0)
        return Observation(False, lsn, setting, (), bool(receivers))

    def setting_shown_by_new_session(self) -> str:
        with _translated("show synchronous_standby_names", self.dsn), self._connect() as conn:
            row = conn.execute("SHOW synchronous_standby_names").fetchone()
            return str(row[0]) if row else ""

    # --- writing the setting ------------------------------------------------------------

    def apply(self, fresh: Callable[[], Desired], *, timeout: float = 5.0) -> Desired:
        """Enforce the setting ``fresh()`` renders, under the advisory lock; wait until in force."""
        with _translated("apply synchronous_standby_names", self.dsn):
            try:
                conn = self._session()
                conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(timeout * 1000)}ms")))
                conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
                try:
                    desired = fresh()  # read inside the lock hold: writes follow revision order
                    row = conn.execute("SELECT current_setting('synchronous_standby_names')").fetchone()
                    before = str(row[0]) if row else ""
                    if before != desired.setting:
                        conn.execute(
                            sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                                sql.Literal(desired.setting)
                            )
                        )
                        conn.execute("SELECT pg_reload_conf()")
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg.OperationalError:
                self.close()  # a broken session also released the lock on the server
                raise
        self.wait_in_force(desired, timeout=timeout)
        if not before.strip():
            self._query("checkpoint", "CHECKPOINT")  # the checkpointer now knows sync standbys are defined
        return desired

    def in_force(self, desired: Desired) -> bool:
        """True when every WAL sender agrees with the setting and a new session shows it."""
        listed = {n.lower() for n in desired.standbys}
        for r in self.observe().replication:
            if r.state != "streaming":
                continue
            counted = r.sync_state in ("sync", "quorum", "potential") and r.sync_priority > 0
            if counted != (r.name.lower() in listed):
                return False
        return self.setting_shown_by_new_session() == desired.setting

    def wait_in_force(self, desired: Desired, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.in_force(desired):
            if time.monotonic() > deadline:
                raise NotInForceError(
                    f"synchronous_standby_names = {desired.setting!r} (revision {desired.revision}) was written "
                    f"but PostgreSQL did not show it in force within {timeout:g}s; the sidecar will retry"
                )
            time.sleep(0.002)

    # --- the barrier ------------------------------------------------------------------

    def barrier(self, token: str, *, timeout: float) -> int:
        """A synchronous commit made now; returns its LSN once acknowledged by the standbys.

        Raises :class:`BarrierPendingError` if not acknowledged within ``timeout``: the
        commit keeps waiting (cancelling it would be reported as success) and the next
        call waits for the same commit instead of starting another.
        """
        if self._barrier is None or (not self._barrier.is_alive() and "lsn" not in self._barrier_result):
            self._barrier_result = {"token": token}
            self._barrier = threading.Thread(target=self._run_barrier, args=(token, self._barrier_result), daemon=True)
            self._barrier.start()
        self._barrier.join(timeout)
        result = self._barrier_result
        if self._barrier.is_alive():
            raise BarrierPendingError(
                f"barrier {result['token']} not acknowledged by the standbys within {timeout:g}s; "
                "it keeps waiting (check that enough cohort standbys are streaming)"
            )
        self._barrier = None
        if "error" in result:
            raise result["error"]
        return int(result["lsn"])

    def _run_barrier(self, token: str, result: dict[str, Any]) -> None:
        warnings: list[str] = []
        try:
            with _translated("commit the barrier", self.dsn), self._connect(autocommit=False) as conn:
                conn.add_notice_handler(lambda d: warnings.append(d.message_primary or ""))
                conn.execute("SET LOCAL synchronous_commit = on")
                row = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (BARRIER_CHANNEL, token)).fetchone()
                conn.commit()
            if any("synchronous replication" in w for w in warnings):
                # The wait was cancelled by someone: the commit is local only.
                result["error"] = PostgresUnreachableError(f"barrier {token}: wait was cancelled ({warnings[-1]})")
                return
            result["lsn"] = _lsn(row[0] if row else None) or 0
        except PgcohortError as e:
            result["error"] = e

    # --- failover primitives ----------------------------------------------------------

    def revoke(self, *, timeout: float = 10.0) -> int:
        """Stop this standby receiving WAL; return its final position (max received/replayed)."""
        self._query("revoke (clear primary_conninfo)", "ALTER SYSTEM SET primary_conninfo = ''")
        self._query("reload", "SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while self._query(
            "read pg_stat_wal_receiver", "SELECT count(*) FROM pg_stat_wal_receiver WHERE pid IS NOT NULL"
        )[0][0]:
            if time.monotonic() > deadline:
                raise PostgresUnreachableError(
                    f"the WAL receiver of {_where(self.dsn)} did not stop within {timeout:g}s"
                )
            time.sleep(0.02)
        return self.observe().lsn

    def follow(self, conninfo: str) -> None:
        """Make this standby receive from the server ``conninfo`` names (undoes a revoke)."""
        self._query(
            "set primary_conninfo", sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo))
        )
        self._query("reload", "SELECT pg_reload_conf()")

    def promote(self, *, timeout: int = 60) -> None:
        (row,) = self._query("promote", "SELECT pg_promote(true, %s)", (timeout,))
        if not row[0]:
            raise PostgresUnreachableError(f"{_where(self.dsn)} did not finish promotion within {timeout}s")
