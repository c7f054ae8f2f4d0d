"""The barrier: a synchronous commit that proves which standbys hold every earlier write.

:meth:`Barriers.barrier` commits a transactional WAL message with ``synchronous_commit = on``
and returns its LSN once released. The wait is bounded on the client side, never by
cancelling (a cancelled wait reports the commit as successful although no standby has it). A
pending barrier is waited for again only by a call for the same revision and apply; anything
else starts a new one. :meth:`Barriers.acknowledged` reads which standbys report a flush
position at or past an LSN, so a barrier can prove who holds it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from pgcohort.core.failover import format_lsn
from pgcohort.errors import BarrierPendingError, PgcohortError, PostgresUnreachableError
from pgcohort.postgres.session import Connection, Session, lsn, translated

BARRIER_CHANNEL = "pgcohort-barrier"


@dataclass
class _Barrier:
    """One barrier commit in flight: for which revision and which apply (``epoch``), and its outcome."""

    revision: int
    epoch: int
    thread: threading.Thread | None = None
    result: dict[str, Any] = field(default_factory=dict)


class Barriers:
    """Barrier commits on one server, each on a connection of its own (one kept between barriers)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._barrier: _Barrier | None = None
        self._spare: Connection | None = None  # the barriers' connection between barriers
        self._spare_lock = threading.Lock()
        self._closed = False

    def barrier(self, revision: int, epoch: int, *, timeout: float) -> int:
        """A synchronous commit for ``revision`` and apply ``epoch``; its LSN once released.

        Raises :class:`BarrierPendingError` if not released within ``timeout``: the commit keeps
        waiting (cancelling it would be reported as success), and the next call for the same
        revision and apply waits for the same commit. A barrier pending for another revision or
        an earlier apply is abandoned, never returned.
        """
        self._closed = False
        b = self._barrier
        if b is None or (b.revision, b.epoch) != (revision, epoch) or "error" in b.result:
            b = _Barrier(revision, epoch)
            b.thread = threading.Thread(target=self._run, args=(b,), name=f"barrier-{revision}", daemon=True)
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

    def acknowledged(self, at: int) -> dict[str, int]:
        """Standbys whose reported flush position is at or past ``at``, with that position."""
        rows = self.session.query(
            "read pg_stat_replication",
            "SELECT application_name, flush_lsn FROM pg_stat_replication"
            " WHERE flush_lsn IS NOT NULL AND flush_lsn >= %s::pg_lsn",
            (format_lsn(at),),
        )
        return {str(r[0]): lsn(r[1]) or 0 for r in rows}

    def _run(self, b: _Barrier) -> None:
        warnings: list[str] = []
        token = f"revision {b.revision}, apply {b.epoch}"
        conn: Connection | None = None
        try:
            with translated("commit the barrier", self.session.dsn):
                conn = self._connection()
                conn.add_notice_handler(notice := lambda d: warnings.append(d.message_primary or ""))
                conn.execute("SET LOCAL synchronous_commit = on")
                row = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (BARRIER_CHANNEL, token)).fetchone()
                conn.commit()
                conn.remove_notice_handler(notice)
            self._keep(conn)
            conn = None
            if any("synchronous replication" in w for w in warnings):
                # The wait was cancelled by someone: the commit is local only.
                b.result["error"] = PostgresUnreachableError(f"barrier ({token}): wait was cancelled ({warnings[-1]})")
                return
            b.result["lsn"] = lsn(row[0] if row else None) or 0
        except PgcohortError as e:
            b.result["error"] = e
        finally:
            if conn is not None:
                conn.close()

    def _connection(self) -> Connection:
        """The spare connection barriers commit on (one connect saved per barrier), or a new one."""
        with self._spare_lock:
            conn, self._spare = self._spare, None
        if conn is None or conn.closed or conn.broken:
            conn = self.session.connect(autocommit=False)
        return conn

    def _keep(self, conn: Connection) -> None:
        with self._spare_lock:
            if self._spare is None and not self._closed:
                self._spare = conn
                return
        conn.close()

    def close(self) -> None:
        with self._spare_lock:
            spare, self._spare, self._closed = self._spare, None, True
        if spare is not None:
            spare.close()
