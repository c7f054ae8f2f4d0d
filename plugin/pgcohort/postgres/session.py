"""One PostgreSQL server over one kept libpq session; every psycopg error becomes a PostgresUnreachableError here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgcohort.core.failover import parse_lsn
from pgcohort.errors import InvalidInputError, PostgresUnreachableError

LOCK_TIMEOUT = 5.0  # seconds a session waits for a lock (lock_timeout, set once per session)
Connection = psycopg.Connection[Any]


def lsn(value: Any) -> int | None:
    """An LSN PostgreSQL returned as text, as an integer (None stays None)."""
    return None if value is None else parse_lsn(str(value))


def where(dsn: str) -> str:
    """host:port (or the service name) of a DSN, for messages: never its password or other options."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "the configured server (its DSN does not parse)"
    if parts.get("service") and not parts.get("host"):
        return f"service {parts['service']}"
    return f"{parts.get('host') or 'local'}:{parts.get('port') or '5432'}"


def dsn_params(dsn: str) -> dict[str, str]:
    """A libpq connection string (keyword/value or URI) as its keywords; InvalidInputError when it does not parse."""
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.Error as e:
        raise InvalidInputError(f"a libpq connection string does not parse: {' '.join(str(e).split())}") from None


def dsn_with(dsn: str, **params: str) -> str:
    """``dsn`` with ``params`` replacing its own keywords (another host, port or dbname; the rest as given)."""
    return make_conninfo(dsn, **params)


@contextmanager
def translated(what: str, dsn: str) -> Iterator[None]:
    """Run a block against the server; a psycopg error becomes PostgresUnreachableError saying ``what`` failed."""
    try:
        yield
    except psycopg.Error as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise PostgresUnreachableError(f"PostgreSQL ({where(dsn)}) failed to {what}: {detail}") from None


class Session:
    """A libpq connection string and the one session kept open on it (reconnected when broken)."""

    def __init__(self, dsn: str, *, connect_timeout: float = 3.0) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: Connection | None = None

    @property
    def where(self) -> str:
        """host:port of this server, for messages (never the password)."""
        return where(self.dsn)

    def connect(self, autocommit: bool = True) -> Connection:
        """A new connection (not the kept session)."""
        return psycopg.connect(
            self.dsn,
            autocommit=autocommit,
            connect_timeout=max(1, int(self.connect_timeout)),
            application_name="pgcohort",
        )

    def conn(self) -> Connection:
        """The kept session, opened (or reopened) as needed."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.connect()
            self._conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(LOCK_TIMEOUT * 1000)}ms")))
        return self._conn

    def query(self, what: str, query: sql.Composable | str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` on the kept session; its rows (none for a statement). A broken session is dropped."""
        with translated(what, self.dsn):
            try:
                cur = self.conn().execute(query, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError:
                self.close()
                raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
