"""The plain-PostgreSQL adapter: :class:`PostgresNode` implements :class:`pgcohort.seams.Node`.

The only module that imports psycopg. What it promises (measured on PostgreSQL 15, see
docs/POSTGRES.md):

* :meth:`PostgresNode.setting_lock` holds a **PostgreSQL advisory lock** on the node's
  session; its writer sets ``synchronous_standby_names`` with ``ALTER SYSTEM`` and
  ``pg_reload_conf()``. The caller reads the committed ruleset *inside that hold*; holds
  are totally ordered and committed revisions only grow, so two sidecars that both believe
  they are beside the primary can never regress the setting to an older revision.
* :meth:`PostgresNode.wait_in_force` returns once every session shows the setting and every
  connected WAL sender reports the matching ``sync_state`` (plus a ``CHECKPOINT`` when the
  previous value was empty, because the checkpointer's copy decides whether commits wait).
* :meth:`PostgresNode.barrier` commits a transactional WAL message with
  ``synchronous_commit = on`` and returns its LSN once released. The wait is bounded on the
  client side, never by cancelling (a cancelled wait reports the commit as successful
  although no standby has it). A pending barrier is waited for again only by a call for
  the same revision with no write in between; anything else starts a new one.
* :meth:`PostgresNode.acknowledged` reads which standbys report a flush position at or past
  an LSN (pg_stat_replication), so a barrier can prove who holds it.
* :meth:`PostgresNode.revoke` fences a standby (no WAL receiver, seen stopped; no archive
  restore) and then returns what it holds on disk: the end of valid WAL in its ``pg_wal`` on
  its newest timeline, read over ``pg_ls_waldir()`` and ``pg_read_binary_file()`` and
  checked record by record (:mod:`pgcohort.core.wal`), never the receive or replay positions,
  which a restart or ``recovery_min_apply_delay`` understate (:class:`NotStandbyError` for a
  server that is not in recovery); :meth:`PostgresNode.promote` promotes and waits.
* Every psycopg error becomes :class:`PostgresUnreachableError` in one function.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgcohort.core import wal
from pgcohort.core.failover import Position, format_lsn, parse_lsn
from pgcohort.core.rules import Member
from pgcohort.core.steps import Desired
from pgcohort.core.term import Timeline
from pgcohort.errors import (
    BarrierPendingError,
    InvalidInputError,
    NotInForceError,
    NotStandbyError,
    PgcohortError,
    PostgresUnreachableError,
)
from pgcohort.seams import Observation, Replication

LOCK_KEY = 0x7067636F686F7274  # "pgcohort" in ASCII: the advisory lock serialising writes
LOCK_TIMEOUT = 5.0  # seconds a session waits for that lock (lock_timeout, set once per session)
BARRIER_CHANNEL = "pgcohort-barrier"


@dataclass
class _Barrier:
    """One barrier commit in flight: for which revision and which apply (``epoch``), and its outcome."""

    revision: int
    epoch: int
    thread: threading.Thread | None = None
    result: dict[str, Any] = field(default_factory=dict)


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
    """host:port (or the service name) of a DSN, for messages: never its password or other options."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "the configured server (its DSN does not parse)"
    if parts.get("service") and not parts.get("host"):
        return f"service {parts['service']}"
    return f"{parts.get('host') or 'local'}:{parts.get('port') or '5432'}"


class PostgresNode:
    """One PostgreSQL server, reached with a libpq connection string."""

    def __init__(self, dsn: str, *, connect_timeout: float = 3.0) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._barrier: _Barrier | None = None
        self._epoch = 0  # counts writes through setting_lock: a barrier belongs to one
        self._checkpoint_due = False
        self._spare: psycopg.Connection[Any] | None = None  # the barriers' connection between barriers
        self._spare_lock = threading.Lock()
        self._closed = False

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
            self._closed = False
            self._conn = self._connect()
            self._conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(LOCK_TIMEOUT * 1000)}ms")))
        return self._conn

    @property
    def where(self) -> str:
        """host:port of this server, for messages (never the password)."""
        return _where(self.dsn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._spare_lock:
            spare, self._spare, self._closed = self._spare, None, True
        if spare is not None:
            spare.close()

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
        """Role, position, current setting and (on a primary) its replication connections: one query."""
        (row,) = self._query(
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
            reps = tuple(Replication(r[0], r[1] or "", r[2] or "", int(r[3] or 0), _lsn(r[4]), r[5]) for r in senders)
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

    @contextmanager
    def setting_lock(self) -> Iterator[_SettingWriter]:
        """Hold the advisory lock that serialises writers of the setting on this server (at most LOCK_TIMEOUT)."""
        with _translated("lock synchronous_standby_names", self.dsn):
            conn = self._session()
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
                try:
                    yield _SettingWriter(self, conn)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg.OperationalError:
                self.close()  # a broken session also released the lock on the server
                raise

    def _write(self, conn: psycopg.Connection[Any], desired: Desired) -> None:
        self._epoch += 1  # every apply, even one that finds the value in place, needs its own barrier
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
        ((setting, senders),) = self._query(
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
            self._query("checkpoint", "CHECKPOINT")  # the checkpointer now knows sync standbys are defined
            self._checkpoint_due = False

    # --- the barrier ------------------------------------------------------------------

    def barrier(self, revision: int, *, timeout: float) -> int:
        """A synchronous commit for ``revision`` made after the latest write; its LSN once released.

        Raises :class:`BarrierPendingError` if not released within ``timeout``: the commit keeps
        waiting (cancelling it would be reported as success), and the next call for the same
        revision with no write in between waits for the same commit. A barrier pending for
        another revision or from before the latest write is abandoned, never returned.
        """
        b = self._barrier
        if b is None or (b.revision, b.epoch) != (revision, self._epoch) or "error" in b.result:
            b = _Barrier(revision, self._epoch)
            b.thread = threading.Thread(target=self._run_barrier, args=(b,), name=f"barrier-{revision}", daemon=True)
            self._barrier = b
            b.thread.start()
        assert b.thread is not None
        b.thread.join(timeout)
        if b.thread.is_alive():
            raise BarrierPendingError(
                f"barrier for revision {revision} not acknowledged by the standbys within {timeout:g}s; "
                "it keeps waiting (check that enough cohort standbys are streaming)"
            )
        if "error" in b.result:
            raise b.result["error"]
        return int(b.result["lsn"])

    def acknowledged(self, lsn: int) -> dict[str, int]:
        """Standbys whose reported flush position is at or past ``lsn``, with that position."""
        rows = self._query(
            "read pg_stat_replication",
            "SELECT application_name, flush_lsn FROM pg_stat_replication"
            " WHERE flush_lsn IS NOT NULL AND flush_lsn >= %s::pg_lsn",
            (format_lsn(lsn),),
        )
        return {str(r[0]): _lsn(r[1]) or 0 for r in rows}

    def _run_barrier(self, b: _Barrier) -> None:
        warnings: list[str] = []
        token = f"revision {b.revision}, apply {b.epoch}"
        conn: psycopg.Connection[Any] | None = None
        try:
            with _translated("commit the barrier", self.dsn):
                conn = self._barrier_session()
                conn.add_notice_handler(notice := lambda d: warnings.append(d.message_primary or ""))
                conn.execute("SET LOCAL synchronous_commit = on")
                row = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (BARRIER_CHANNEL, token)).fetchone()
                conn.commit()
                conn.remove_notice_handler(notice)
            self._keep_barrier_session(conn)
            conn = None
            if any("synchronous replication" in w for w in warnings):
                # The wait was cancelled by someone: the commit is local only.
                b.result["error"] = PostgresUnreachableError(f"barrier ({token}): wait was cancelled ({warnings[-1]})")
                return
            b.result["lsn"] = _lsn(row[0] if row else None) or 0
        except PgcohortError as e:
            b.result["error"] = e
        finally:
            if conn is not None:
                conn.close()

    def _barrier_session(self) -> psycopg.Connection[Any]:
        """The spare connection barriers commit on (one connect saved per barrier), or a new one."""
        with self._spare_lock:
            conn, self._spare = self._spare, None
        if conn is None or conn.closed or conn.broken:
            conn = self._connect(autocommit=False)
        return conn

    def _keep_barrier_session(self, conn: psycopg.Connection[Any]) -> None:
        with self._spare_lock:
            if self._spare is None and not self._closed:
                self._spare = conn
                return
        conn.close()

    # --- failover primitives ----------------------------------------------------------

    def revoke(self, *, timeout: float = 10.0, candidate: Member | None = None) -> Position:
        """Fence this standby and return what it holds (see :meth:`fence`); the settings it had are kept.

        The previous ``primary_conninfo`` and ``restore_command`` are kept in
        ``pgcohort.primary_conninfo`` and ``pgcohort.restore_command`` (also through ALTER
        SYSTEM) so that :meth:`follow` can repoint the standby to a new primary with the same
        user, password file and TLS options, and archive restore as before.
        """
        return self.fence(timeout=timeout, candidate=candidate, keep=True)

    def fence(self, *, timeout: float, candidate: Member | None, keep: bool) -> Position:
        """Stop this standby receiving WAL and restoring it from the archive; once no WAL receiver runs (or
        one streams from ``candidate``), return the end of valid WAL it holds (:meth:`held`)."""
        before = self.observe()
        if before.primary:
            raise NotStandbyError(
                f"{self.where} is not in recovery: it is a primary (at {format_lsn(before.lsn)})",
                position=before.lsn,
            )
        ((conninfo, restore),) = self._query(
            "read primary_conninfo", "SELECT current_setting('primary_conninfo'), current_setting('restore_command')"
        )
        if keep:
            for name, value in (("primary_conninfo", conninfo), ("restore_command", restore)):
                if value:
                    self._keep(name, value)
        self._query("revoke (clear primary_conninfo)", "ALTER SYSTEM SET primary_conninfo = ''")
        self._query("stop archive restore (clear restore_command)", "ALTER SYSTEM SET restore_command = ''")
        self._query("reload", "SELECT pg_reload_conf()")
        allowed = (candidate.host.strip("[]"), candidate.port) if candidate is not None else None
        deadline = time.monotonic() + timeout
        while True:
            senders = self._query(
                "read pg_stat_wal_receiver",
                "SELECT sender_host, sender_port FROM pg_stat_wal_receiver WHERE pid IS NOT NULL",
            )
            if all(allowed is not None and (h, p) == allowed for h, p in senders):
                break
            if time.monotonic() > deadline:
                raise PostgresUnreachableError(
                    f"the WAL receiver of {self.where} did not stop within {timeout:g}s "
                    f"(still streaming from {', '.join(f'{h}:{p}' for h, p in senders)})"
                )
            time.sleep(0.02)
        return self.held()

    def _keep(self, name: str, value: str) -> None:
        """Keep ``value`` of ``name`` as ``pgcohort.<name>`` (ALTER SYSTEM), unless a kept value is already there."""
        kept_name = sql.Identifier("pgcohort", name)
        ((kept,),) = self._query(f"read pgcohort.{name}", "SELECT current_setting(%s, true)", (f"pgcohort.{name}",))
        if kept:
            return
        # ALTER SYSTEM accepts a custom (dotted) parameter only once the session knows its placeholder.
        self._query(f"declare pgcohort.{name}", sql.SQL("SET {} = ''").format(kept_name))
        self._query(
            f"keep the previous {name}", sql.SQL("ALTER SYSTEM SET {} = {}").format(kept_name, sql.Literal(value))
        )
        # Drop the session's own value, or this session would keep reading '' after the reload.
        self._query(f"undeclare pgcohort.{name}", sql.SQL("RESET {}").format(kept_name))

    def held(self) -> Position:
        """The end of valid WAL in this standby's ``pg_wal``, on its newest timeline: what it holds on disk.

        Walked record by record (page headers, record headers, ``xl_prev`` links, CRCs) from its
        replay position, which is a record boundary already checked by recovery, to the first
        record that is missing, torn or invalid (:func:`pgcohort.core.wal.end_of_wal`).
        """
        ((replayed, seg_size, page_size, names),) = self._query(
            "list pg_wal",
            "SELECT pg_last_wal_replay_lsn()::text,"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
            " (SELECT setting::int FROM pg_settings WHERE name = 'wal_block_size'),"
            " (SELECT coalesce(array_agg(name), '{}') FROM pg_ls_waldir())",
        )
        start = _lsn(replayed)
        segments = [t for t in (wal.parse_wal_file_name(n, seg_size=seg_size) for n in names) if t is not None]
        if start is None or not segments:
            raise PostgresUnreachableError(f"{self.where} has replayed no WAL yet: what it holds cannot be read")
        tli = max(t for t, _ in segments)
        history = wal.parse_history(self._read_file(f"{tli:08X}.history").decode()) if tli > 1 else ()
        try:
            end = wal.end_of_wal(self._read_file, names, start, tli, history, seg_size=seg_size, page_size=page_size)
        except wal.WalError as e:
            if start % seg_size == 0 and not any(segno == start // seg_size for _, segno in segments):
                end = start  # replay stopped at a segment's end (a WAL switch) and nothing of the next one arrived
            else:
                raise PostgresUnreachableError(f"cannot read what {self.where} holds in pg_wal: {e}") from None
        return Position(end, tli)

    def _read_file(self, name: str, offset: int = 0, length: int = 1 << 20) -> bytes:
        """``length`` bytes of ``pg_wal/<name>`` from ``offset`` (fewer at its end; none if it does not exist)."""
        ((data,),) = self._query(
            "read pg_wal", "SELECT pg_read_binary_file(%s, %s, %s, true)", (f"pg_wal/{name}", offset, length)
        )
        return bytes(data) if data is not None else b""

    def timeline(self) -> Timeline:
        """This primary's timeline (from its current WAL file's name) and that timeline's ancestry."""
        ((name,),) = self._query("read its timeline", "SELECT pg_walfile_name(pg_current_wal_lsn())")
        tli = int(str(name)[:8], 16)
        history = wal.parse_history(self._read_file(f"{tli:08X}.history").decode()) if tli > 1 else ()
        return Timeline(tli, tuple(history))

    def release(self) -> None:
        """Nothing: with plain PostgreSQL a refused failover leaves the standbys revoked.

        Two orchestrators may survey at once; lifting one's fence could unfence the other's
        survey. The next allowed failover repoints every survivor (:meth:`follow`).
        """

    def unfence(self) -> None:
        """Drop the fence's ALTER SYSTEM values, so the configuration file's own apply again (Patroni's)."""
        self._query("lift the fence (primary_conninfo)", "ALTER SYSTEM RESET primary_conninfo")
        self._query("lift the fence (restore_command)", "ALTER SYSTEM RESET restore_command")
        self._query("reload", "SELECT pg_reload_conf()")

    def follow(self, primary: Member) -> None:
        """Undo a revoke: receive from ``primary`` with the connection options used before it, and restore
        WAL from the archive again as before."""
        ((kept, current, kept_restore),) = self._query(
            "read primary_conninfo",
            "SELECT current_setting('pgcohort.primary_conninfo', true), current_setting('primary_conninfo'),"
            " current_setting('pgcohort.restore_command', true)",
        )
        base = kept or current
        if not base:
            raise InvalidInputError(
                f"{self.where} has no primary_conninfo to repoint (it was never a streaming standby, or it was "
                f"cleared outside pgcohort); set primary_conninfo to {primary.host}:{primary.port} by hand"
            )
        params = {k: str(v) for k, v in conninfo_to_dict(base).items() if v is not None}
        params.update(host=primary.host.strip("[]"), port=str(primary.port))
        self._query(
            "set primary_conninfo",
            sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(make_conninfo("", **params))),
        )
        self._query(
            "restore restore_command",
            sql.SQL("ALTER SYSTEM SET restore_command = {}").format(sql.Literal(kept_restore))
            if kept_restore
            else "ALTER SYSTEM RESET restore_command",
        )
        for name, value in (("primary_conninfo", kept), ("restore_command", kept_restore)):
            if value:
                self._forget(name)
        self._query("reload", "SELECT pg_reload_conf()")

    def _forget(self, name: str) -> None:
        kept_name = sql.Identifier("pgcohort", name)
        self._query(f"declare pgcohort.{name}", sql.SQL("SET {} = ''").format(kept_name))
        self._query(f"forget the kept {name}", sql.SQL("ALTER SYSTEM RESET {}").format(kept_name))
        self._query(f"undeclare pgcohort.{name}", sql.SQL("RESET {}").format(kept_name))

    def set_eligible(self, eligible: bool) -> bool:
        """Nothing to tell: with plain PostgreSQL only pgcohort's gate promotes, and it checks the cohort."""
        return False

    def promote(self, *, timeout: int = 60, setting: Desired | None = None) -> None:
        """Promote and wait until it accepts writes; with ``setting`` in force from its first commit.

        A standby's ``synchronous_standby_names`` means nothing until it is promoted, and then
        whatever it holds (often nothing: commits acknowledged by no standby) governs until its
        sidecar applies the rule. So the setting rendered for it is written and reloaded first.
        """
        if setting is not None:
            self._query(
                "set synchronous_standby_names before promoting",
                sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(setting.setting)),
            )
            self._query("reload", "SELECT pg_reload_conf()")
            deadline = time.monotonic() + timeout
            while self._query("read the setting", "SELECT current_setting('synchronous_standby_names')")[0][0] != (
                setting.setting
            ):
                if time.monotonic() > deadline:
                    raise NotInForceError(f"{self.where} did not load {setting.setting!r} within {timeout}s")
                time.sleep(0.01)
        (row,) = self._query("promote", "SELECT pg_promote(true, %s)", (timeout,))
        if not row[0]:
            raise PostgresUnreachableError(f"{_where(self.dsn)} did not finish promotion within {timeout}s")


class _SettingWriter:
    """What :meth:`PostgresNode.setting_lock` yields: writes through the locked session."""

    def __init__(self, node: PostgresNode, conn: psycopg.Connection[Any]) -> None:
        self._node, self._conn = node, conn

    def write(self, desired: Desired) -> None:
        self._node._write(self._conn, desired)


def connector(options: str) -> Callable[[Member], PostgresNode]:
    """Reach any member by the host and port the ruleset records, with libpq ``options``."""
    return lambda m: PostgresNode(f"host={m.host.strip('[]')} port={m.port} {options}")
