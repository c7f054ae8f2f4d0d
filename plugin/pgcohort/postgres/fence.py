"""Fencing a standby, what it holds on disk, following a new primary, promoting.

* :func:`fence` stops a standby receiving WAL and restoring it from the archive
  (``primary_conninfo`` and ``restore_command`` cleared with ALTER SYSTEM) and waits until
  ``pg_stat_wal_receiver`` shows no receiver (or one streaming from the candidate); only then
  does :func:`held` read what it holds: the end of valid WAL in its ``pg_wal`` on its newest
  timeline, over ``pg_ls_waldir()`` and ``pg_read_binary_file()``, checked record by record
  (:mod:`pgcohort.core.wal`), never the receive or replay positions, which a restart or
  ``recovery_min_apply_delay`` understate. NotStandbyError for a server not in recovery.
* With ``keep``, the previous values are kept in ``pgcohort.primary_conninfo`` and
  ``pgcohort.restore_command`` for :func:`follow`; :func:`unfence` resets the fence instead
  (where the configuration file holds the HA manager's own values, as Patroni's does).
* :func:`promote` promotes with the rule rendered for the node already in force; :func:`arm` puts it in
  force for an HA manager that promotes the node itself (repmgr).
"""

from __future__ import annotations

import time

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgcohort.core import wal
from pgcohort.core.failover import Position, format_lsn
from pgcohort.core.rules import Member
from pgcohort.core.steps import Desired
from pgcohort.core.term import Timeline
from pgcohort.errors import InvalidInputError, NotInForceError, NotStandbyError, PostgresUnreachableError
from pgcohort.postgres.session import Session, lsn

KEPT = ("primary_conninfo", "restore_command")


def fence(s: Session, *, timeout: float, candidate: Member | None, keep: bool) -> Position:
    """Stop this standby receiving WAL and restoring it from the archive; once no WAL receiver runs (or one
    streams from ``candidate``), return the end of valid WAL it holds (:func:`held`)."""
    ((in_recovery, flushed, conninfo, restore),) = s.query(
        "read its role",
        "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,"
        " current_setting('primary_conninfo'), current_setting('restore_command')",
    )
    if not in_recovery:
        at = lsn(flushed) or 0
        raise NotStandbyError(f"{s.where} is not in recovery: it is a primary (at {format_lsn(at)})", position=at)
    if keep:
        for name, value in zip(KEPT, (conninfo, restore), strict=True):
            if value:
                _keep(s, name, value)
    s.query("revoke (clear primary_conninfo)", "ALTER SYSTEM SET primary_conninfo = ''")
    s.query("stop archive restore (clear restore_command)", "ALTER SYSTEM SET restore_command = ''")
    s.query("reload", "SELECT pg_reload_conf()")
    allowed = (candidate.host.strip("[]"), candidate.port) if candidate is not None else None
    deadline = time.monotonic() + timeout
    while True:
        senders = s.query(
            "read pg_stat_wal_receiver",
            "SELECT sender_host, sender_port FROM pg_stat_wal_receiver WHERE pid IS NOT NULL",
        )
        if all(allowed is not None and (h, p) == allowed for h, p in senders):
            break
        if time.monotonic() > deadline:
            raise PostgresUnreachableError(
                f"the WAL receiver of {s.where} did not stop within {timeout:g}s "
                f"(still streaming from {', '.join(f'{h}:{p}' for h, p in senders)})"
            )
        time.sleep(0.02)
    return held(s)


def held(s: Session) -> Position:
    """The end of valid WAL in this standby's ``pg_wal``, on its newest timeline: what it holds on disk.

    Walked record by record (page headers, record headers, ``xl_prev`` links, CRCs) from its
    replay position, which is a record boundary already checked by recovery, to the first
    record that is missing, torn or invalid (:func:`pgcohort.core.wal.end_of_wal`).
    """
    ((replayed, seg_size, page_size, names),) = s.query(
        "list pg_wal",
        "SELECT pg_last_wal_replay_lsn()::text,"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " (SELECT setting::int FROM pg_settings WHERE name = 'wal_block_size'),"
        " (SELECT coalesce(array_agg(name), '{}') FROM pg_ls_waldir())",
    )
    start = lsn(replayed)
    segments = [t for t in (wal.parse_wal_file_name(n, seg_size=seg_size) for n in names) if t is not None]
    if start is None or not segments:
        raise PostgresUnreachableError(f"{s.where} has replayed no WAL yet: what it holds cannot be read")
    tli = max(t for t, _ in segments)

    def read(name: str, offset: int, length: int) -> bytes:
        return _read_file(s, name, offset, length)

    history = _history(s, tli)
    try:
        end = wal.end_of_wal(read, names, start, tli, history, seg_size=seg_size, page_size=page_size)
    except wal.WalError as e:
        if start % seg_size == 0 and not any(segno == start // seg_size for _, segno in segments):
            end = start  # replay stopped at a segment's end (a WAL switch) and nothing of the next one arrived
        else:
            raise PostgresUnreachableError(f"cannot read what {s.where} holds in pg_wal: {e}") from None
    return Position(end, tli)


def timeline(s: Session) -> Timeline:
    """This primary's timeline (from its current WAL file's name) and that timeline's ancestry."""
    ((name,),) = s.query("read its timeline", "SELECT pg_walfile_name(pg_current_wal_lsn())")
    tli = int(str(name)[:8], 16)
    return Timeline(tli, tuple(_history(s, tli)))


def unfence(s: Session) -> None:
    """Drop the fence's ALTER SYSTEM values, so the configuration file's own apply again (Patroni's)."""
    s.query("lift the fence (primary_conninfo)", "ALTER SYSTEM RESET primary_conninfo")
    s.query("lift the fence (restore_command)", "ALTER SYSTEM RESET restore_command")
    s.query("reload", "SELECT pg_reload_conf()")


def follow(s: Session, primary: Member) -> None:
    """Undo a kept fence: receive from ``primary`` with the connection options used before it, and restore WAL
    from the archive again as before."""
    ((kept, current, kept_restore),) = s.query(
        "read primary_conninfo",
        "SELECT current_setting('pgcohort.primary_conninfo', true), current_setting('primary_conninfo'),"
        " current_setting('pgcohort.restore_command', true)",
    )
    base = kept or current
    if not base:
        raise InvalidInputError(
            f"{s.where} has no primary_conninfo to repoint (it was never a streaming standby, or it was "
            f"cleared outside pgcohort); set primary_conninfo to {primary.host}:{primary.port} by hand"
        )
    params = {k: str(v) for k, v in conninfo_to_dict(base).items() if v is not None}
    params.update(host=primary.host.strip("[]"), port=str(primary.port))
    s.query(
        "set primary_conninfo",
        sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(make_conninfo("", **params))),
    )
    s.query(
        "restore restore_command",
        sql.SQL("ALTER SYSTEM SET restore_command = {}").format(sql.Literal(kept_restore))
        if kept_restore
        else "ALTER SYSTEM RESET restore_command",
    )
    for name, value in zip(KEPT, (kept, kept_restore), strict=True):
        if value:
            _forget(s, name)
    s.query("reload", "SELECT pg_reload_conf()")


def promote(s: Session, *, timeout: int = 60, setting: Desired | None = None) -> None:
    """Promote and wait until it accepts writes; with ``setting`` in force from its first commit.

    A standby's ``synchronous_standby_names`` means nothing until it is promoted, and then
    whatever it holds (often nothing: commits acknowledged by no standby) governs until its
    sidecar applies the rule. So the setting rendered for it is written and reloaded first.
    """
    if setting is not None:
        arm(s, setting, timeout=timeout)
    (row,) = s.query("promote", "SELECT pg_promote(true, %s)", (timeout,))
    if not row[0]:
        raise PostgresUnreachableError(f"{s.where} did not finish promotion within {timeout}s")


def arm(s: Session, setting: Desired, *, timeout: int = 60) -> None:
    """Write ``setting`` on this standby (ALTER SYSTEM, reload) and wait until it shows: what it enforces once
    promoted, by whoever promotes it."""
    s.query(
        "set synchronous_standby_names before promoting",
        sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(setting.setting)),
    )
    s.query("reload", "SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    while s.query("read the setting", "SELECT current_setting('synchronous_standby_names')")[0][0] != setting.setting:
        if time.monotonic() > deadline:
            raise NotInForceError(f"{s.where} did not load {setting.setting!r} within {timeout}s")
        time.sleep(0.01)


def _history(s: Session, tli: int) -> tuple[wal.Switch, ...]:
    return wal.parse_history(_read_file(s, f"{tli:08X}.history", 0, 1 << 20).decode()) if tli > 1 else ()


def _read_file(s: Session, name: str, offset: int, length: int) -> bytes:
    """``length`` bytes of ``pg_wal/<name>`` from ``offset`` (fewer at its end; none if it does not exist)."""
    ((data,),) = s.query(
        "read pg_wal", "SELECT pg_read_binary_file(%s, %s, %s, true)", (f"pg_wal/{name}", offset, length)
    )
    return bytes(data) if data is not None else b""


def _keep(s: Session, name: str, value: str) -> None:
    """Keep ``value`` of ``name`` as ``pgcohort.<name>`` (ALTER SYSTEM), unless a kept value is already there."""
    kept_name = sql.Identifier("pgcohort", name)
    ((kept,),) = s.query(f"read pgcohort.{name}", "SELECT current_setting(%s, true)", (f"pgcohort.{name}",))
    if kept:
        return
    # ALTER SYSTEM accepts a custom (dotted) parameter only once the session knows its placeholder.
    s.query(f"declare pgcohort.{name}", sql.SQL("SET {} = ''").format(kept_name))
    s.query(f"keep the previous {name}", sql.SQL("ALTER SYSTEM SET {} = {}").format(kept_name, sql.Literal(value)))
    # Drop the session's own value, or this session would keep reading '' after the reload.
    s.query(f"undeclare pgcohort.{name}", sql.SQL("RESET {}").format(kept_name))


def _forget(s: Session, name: str) -> None:
    kept_name = sql.Identifier("pgcohort", name)
    s.query(f"declare pgcohort.{name}", sql.SQL("SET {} = ''").format(kept_name))
    s.query(f"forget the kept {name}", sql.SQL("ALTER SYSTEM RESET {}").format(kept_name))
    s.query(f"undeclare pgcohort.{name}", sql.SQL("RESET {}").format(kept_name))
