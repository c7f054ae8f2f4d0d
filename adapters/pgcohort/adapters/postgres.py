"""Plain PostgreSQL: pgcohort itself is the HA manager (``pgcohort failover`` promotes).

:class:`PostgresNode` is :class:`pgcohort.postgres.database.Database` as is: the setting is
written with ALTER SYSTEM under the advisory lock, a fence keeps the standby's previous
``primary_conninfo`` and ``restore_command`` so that ``follow`` can repoint it after the
promotion, and a refused failover leaves its fences (two orchestrators may survey at once;
lifting one's fence could unfence the other's survey; the next allowed failover repoints
every survivor). Only the gate promotes, so there is no eligibility to publish.
"""

from __future__ import annotations

from collections.abc import Callable

from pgcohort.config import Config
from pgcohort.core.failover import PLAIN
from pgcohort.core.rules import Member
from pgcohort.postgres.database import Database
from pgcohort.seams import Hook
from pgcohort.store import EtcdStore


class PostgresNode(Database):
    """A PostgreSQL server nothing but pgcohort manages."""

    def release(self) -> None:
        """Nothing: a refused failover leaves the standbys revoked (see the module docstring)."""

    def set_eligible(self, eligible: bool) -> bool:
        """Nothing to tell: only pgcohort's gate promotes, and it checks the cohort."""
        return False


def connector(options: str) -> Callable[[Member], PostgresNode]:
    """Reach any member by the host and port the ruleset records, with libpq ``options``."""
    return lambda m: PostgresNode(f"host={m.host.strip('[]')} port={m.port} {options}")


class PlainPostgres:
    """The ``postgres`` entry of the adapter registry (see :class:`pgcohort.assembly.Adapter`)."""

    name = "postgres"
    wording = PLAIN
    hook = Hook()
    adoption = "pgcohort init --member NAME@HOST:PORT ... --primary NAME"

    def node(self, cfg: Config, store: EtcdStore) -> PostgresNode:
        return PostgresNode(cfg["postgres.dsn"])

    def connector(self, cfg: Config) -> Callable[[Member], PostgresNode]:
        return connector(cfg["postgres.member_options"])

    def preflight(self, cfg: Config, store: EtcdStore) -> str | None:
        return None

    def managed_by(self, cfg: Config, store: EtcdStore) -> str | None:
        return None

    def promotes(self) -> str | None:
        return None  # pgcohort failover promotes

    def adopt(self, source: str, cfg: Config, store: EtcdStore, *, policy: str, actor: str) -> list[str]:
        from pgcohort.errors import InvalidInputError

        raise InvalidInputError("plain PostgreSQL has no manager to adopt from: use init --member ... --primary")


ADAPTER = PlainPostgres()
