"""The one error tree of pgcohort.

Every failure a caller can act on is one of these; each edge (the etcd store, the
PostgreSQL adapter, the configuration loader) translates foreign exceptions into them in
one function, and the CLI maps each class to one exit code::

    PgcohortError                 base; never raised itself
     ├── InvalidInputError        exit 2  bad flag, name, policy or config value; nothing changed
     ├── RefusedError             exit 3  the rules forbid it (joint phase open, K too large, ...)
     ├── ConflictError            exit 4  the revision this was based on is stale: re-read, re-validate
     │    └── SupersededError             our write committed, then someone else's replaced it
     ├── StoreUnavailableError    exit 5  no etcd endpoint answered; nothing is known to have changed
     ├── IndeterminateError       exit 6  a write may or may not have committed: re-read before acting
     ├── InvalidRecordError       exit 7  a record in etcd is not a valid pgcohort record; nothing changed
     ├── NotInitializedError      exit 8  the cluster has no ruleset yet: run `pgcohort init`
     ├── PostgresError            exit 9  PostgreSQL did not do what was asked
     │    ├── PostgresUnreachableError    the server did not answer, or the query failed
     │    ├── NotInForceError             a setting was written but is not yet in force
     │    ├── BarrierPendingError         the barrier commit is not acknowledged yet
     │    ├── NotStandbyError             a member that should be a standby is a primary
     │    ├── WalError                    what a member holds in pg_wal could not be read
     │    └── PatroniUnreachableError     Patroni's REST API did not answer, or refused the call
     ├── AccessDeniedError        exit 10 etcd refused our credentials or role; nothing changed
     └── TimedOutError            exit 11 a step we wait for (e.g. a finalize) did not happen in time

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


class SupersededError(ConflictError):
    """Our write committed (recognised by its writer id in ``history/``), then another replaced it.

    The change happened; whatever depended on it being *current* (a promotion under the term
    we wrote) must not go ahead.
    """

    def __init__(self, message: str, *, committed_revision: int, current_revision: int | None) -> None:
        super().__init__(message, current_revision=current_revision)
        self.committed_revision = committed_revision


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

    def __init__(self, message: str, *, record: str = "ruleset") -> None:
        super().__init__(message)
        self.record = record  # which kind: ruleset, term, history, node (the metric's label)


class NotInitializedError(PgcohortError):
    """The cluster has no ruleset key. Run `pgcohort init` first."""

    exit_code = 8


class PostgresError(PgcohortError):
    """PostgreSQL did not do what was asked."""

    exit_code = 9


class PostgresUnreachableError(PostgresError):
    """The PostgreSQL server could not be reached, or a query failed."""


class PatroniUnreachableError(PostgresError):
    """Patroni's REST API on this node did not answer, or answered with an error."""


class NotInForceError(PostgresError):
    """The setting was written but PostgreSQL did not show it in force in time."""


class BarrierPendingError(PostgresError):
    """The barrier commit was not acknowledged in time; it keeps waiting (for its own revision only)."""


class NotStandbyError(PostgresError):
    """A member that was to be revoked and surveyed is not in recovery: it is a primary."""

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class WalError(PostgresError):
    """What a member holds in pg_wal could not be read: the segment of its replay position is missing or short,
    or the request named no WAL position, timeline or segment layout PostgreSQL could have written.

    The caller fails closed: the member's position stays unknown and it is not counted.
    """


class AccessDeniedError(PgcohortError):
    """etcd denied the request (authentication or role permissions). Nothing was changed."""

    exit_code = 10


class TimedOutError(PgcohortError):
    """A step this command waits for did not happen in time. What was committed stays committed."""

    exit_code = 11


def exit_codes() -> str:
    """The table ``--help`` shows, made from the tree so the two cannot disagree."""
    rows = [(0, "done")]
    seen = set()
    for cls in _leaves(PgcohortError):
        if cls.exit_code not in seen:
            seen.add(cls.exit_code)
            rows.append((cls.exit_code, (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")))
    rows.append((130, "interrupted"))
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in sorted(rows))


def _leaves(root: type[PgcohortError]) -> list[type[PgcohortError]]:
    out: list[type[PgcohortError]] = []
    for sub in root.__subclasses__():
        out.append(sub)
        out += _leaves(sub)
    return out
