"""The one error tree of pgcohort.

Every failure a caller can act on is one of these; each edge (the etcd store, the
PostgreSQL adapter, the configuration loader) translates foreign exceptions into them in
one function, and the CLI maps each class to one exit code::

    PgcohortError                 base; never raised itself
     ├── InvalidInputError        exit 2  bad flag, name, policy or config value; nothing changed
     ├── RefusedError             exit 3  the rules forbid it (joint phase open, K too large, ...)
     ├── ConflictError            exit 4  the revision this was based on is stale: re-read, re-validate
     ├── StoreUnavailableError    exit 5  no etcd endpoint answered; nothing is known to have changed
     ├── IndeterminateError       exit 6  a write may or may not have committed: re-read before acting
     ├── InvalidRecordError       exit 7  a record in etcd is not a valid pgcohort record; nothing changed
     ├── NotInitializedError      exit 8  the cluster has no ruleset yet: run `pgcohort init`
     └── PostgresError            exit 9  PostgreSQL did not do what was asked
          ├── PostgresUnreachableError    the server did not answer, or the query failed
          ├── NotInForceError             a setting was written but is not yet in force
          └── BarrierPendingError         the barrier commit is not acknowledged yet

Messages say what was wrong, what state was kept and what to do next.
"""

from __future__ import annotations


class PgcohortError(Exception):
    """Root of the tree. ``exit_code`` is what the CLI returns for this class."""

    exit_code = 1


class InvalidInputError(PgcohortError):
    """The input is malformed (name, policy, flag, config). No state was changed."""

    exit_code = 2


class RefusedError(PgcohortError):
    """The committed ruleset forbids the request. No state was changed."""

    exit_code = 3


class ConflictError(PgcohortError):
    """The compared revision is stale: someone else committed first. Re-read and re-validate."""

    exit_code = 4

    def __init__(self, message: str, *, current_revision: int | None = None) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class StoreUnavailableError(PgcohortError):
    """No etcd endpoint answered. Reads can be retried; no write was sent or none can be known."""

    exit_code = 5


class IndeterminateError(PgcohortError):
    """A write was sent but its outcome is unknown (timeout, leader loss).

    It may still commit later. Retry the *same* compare-and-swap, or re-read and look for
    this writer's id before doing anything else.
    """

    exit_code = 6


class InvalidRecordError(PgcohortError):
    """A record read from etcd is not a valid pgcohort record. Nothing was changed."""

    exit_code = 7


class NotInitializedError(PgcohortError):
    """The cluster has no ruleset key. Run `pgcohort init` first."""

    exit_code = 8


class PostgresError(PgcohortError):
    """PostgreSQL did not do what was asked."""

    exit_code = 9


class PostgresUnreachableError(PostgresError):
    """The PostgreSQL server could not be reached, or a query failed."""


class NotInForceError(PostgresError):
    """The setting was written but PostgreSQL did not show it in force in time."""


class BarrierPendingError(PostgresError):
    """The barrier commit was not acknowledged in time; it keeps waiting and is reused."""
