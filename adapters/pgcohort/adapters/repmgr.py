"""The repmgr adapter: :class:`RepmgrNode` implements :class:`pgcohort.seams.Node` beside repmgrd (repmgr 5.3).

repmgr elects and promotes; pgcohort owns the durability rule and vets each promotion
(docs/repmgr.md; repmgr's internals in the research notes). What changes from plain PostgreSQL:

* **The setting is the plain adapter's**: ``synchronous_standby_names`` with ``ALTER SYSTEM``
  under the advisory lock. repmgr never writes it.
* **The gate runs as ``failover_validation_command``** on the node repmgrd elected, which repmgr
  runs only there, reads one line of its stdout from, and promotes (its own ``promote_command``)
  when it exits 0. A non-zero exit makes repmgrd elect again ``election_rerun_interval`` later,
  and it elects the same node again (highest received LSN, then priority, then node id). So the
  adapter's :data:`HOOK` says: one stdout line (the report goes to stderr); hand over (before
  allowing, the rule rendered for the candidate is put in force on it and the surveyed members
  are repointed to it, since repmgr promotes it as it is); steer (a refused candidate gets the
  member the failover rule allows promoted by the gate itself, and the veto stands).
* **repmgr's metadata stays true.** :meth:`RepmgrNode.promote` and :meth:`RepmgrNode.follow`
  write ``repmgr.nodes`` and an event as ``repmgr standby promote`` and ``repmgr standby
  follow`` do, so that each repmgrd sees the new primary (a changed ``upstream_node_id`` makes
  it restart its monitoring against it) and ``pgcohort failover`` works beside repmgr too.
* **A refused gate leaves its fences** (as on plain PostgreSQL): nothing serialises two gates
  under repmgr the way Patroni's leader key does, and lifting one gate's fence under another's
  survey can lose a write. An allowed or steered failover repoints every member it fenced.
* **Eligibility is repmgr's ``priority``**: a node outside the committed cohort gets
  ``priority = 0`` in ``repmgr.nodes`` (repmgrd never elects it), a member gets back the
  priority of its ``repmgr.conf`` (``repmgr.config_file``; 100 without it). The table is written
  on the primary, so this waits while there is none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pgcohort import protocol
from pgcohort.config import Config
from pgcohort.core.failover import Wording
from pgcohort.core.rules import Member, Rule, parse_policy
from pgcohort.core.steps import Desired
from pgcohort.errors import InvalidInputError, PgcohortError, RefusedError
from pgcohort.postgres import fence
from pgcohort.postgres.database import Database
from pgcohort.postgres.session import Session, dsn_params, dsn_with
from pgcohort.seams import Hook
from pgcohort.store import EtcdStore

log = logging.getLogger("pgcohort")

WORDING = Wording(
    choose="repmgrd's next election may promote {name} (the gate allows it), or promote it now with `pgcohort "
    "failover --candidate {name}`",
    other="let repmgrd's next election pick a member of every active cohort, or promote one with `pgcohort "
    "failover --candidate NAME`",
    force="promote one with `pgcohort failover --candidate NAME --allow-data-loss` (a forced term, in the history; "
    "repmgrd follows it)",
    demote="repmgr does not stop a primary: stop it (or fence it with child_nodes_disconnect_command); repmgrd's "
    "next election runs the gate again",
)
"""How a refusal's remedy reads in repmgrd's log: repmgrd elects, and ``pgcohort failover`` keeps its metadata."""

HOOK = Hook(one_line=True, hand_over=True, steer=True)
DEFAULT_PRIORITY = 100  # repmgr's own default (repmgr.conf `priority`)
RETRY_ELIGIBILITY = 10.0  # seconds between attempts to write a priority while the primary does not answer


@dataclass(frozen=True)
class Record:
    """One row of ``repmgr.nodes``."""

    node_id: int
    name: str
    type: str
    upstream: int | None
    active: bool
    priority: int
    location: str
    conninfo: str


class Metadata:
    """repmgr's tables (``repmgr.nodes``, ``repmgr.events``) on one server, over one session."""

    COLUMNS = "node_id, node_name, type, upstream_node_id, active, priority, location, conninfo"

    def __init__(self, session: Session) -> None:
        self.session = session

    def records(self) -> list[Record]:
        rows = self.session.query("read repmgr.nodes", f"SELECT {self.COLUMNS} FROM repmgr.nodes ORDER BY node_id")
        return [
            Record(int(r[0]), str(r[1]), str(r[2]), r[3], bool(r[4]), int(r[5]), str(r[6]), str(r[7])) for r in rows
        ]

    def record(self, name: str) -> Record | None:
        return next((r for r in self.records() if r.name == name), None)

    def writable(self) -> bool:
        return not self.session.query("read its role", "SELECT pg_is_in_recovery()")[0][0]

    def set_primary(self, node_id: int) -> None:
        """What ``repmgr standby promote`` writes (update_node_record_set_primary), in one statement: the node is the
        active primary with no upstream, any other active primary is marked failed."""
        self.session.query(
            "record the promotion in repmgr.nodes",
            "UPDATE repmgr.nodes SET active = (node_id = %s),"
            " type = CASE WHEN node_id = %s THEN 'primary' ELSE type END,"
            " upstream_node_id = CASE WHEN node_id = %s THEN NULL ELSE upstream_node_id END"
            " WHERE node_id = %s OR (type = 'primary' AND active AND node_id <> %s)",
            (node_id,) * 5,
        )

    def set_upstream(self, node_id: int, upstream: int) -> None:
        """What ``repmgr standby follow`` writes on the primary (update_node_record_status)."""
        self.session.query(
            "record the new upstream in repmgr.nodes",
            "UPDATE repmgr.nodes SET type = 'standby', upstream_node_id = %s, active = TRUE WHERE node_id = %s",
            (upstream, node_id),
        )

    def set_priority(self, node_id: int, priority: int) -> None:
        self.session.query(
            "set the priority in repmgr.nodes",
            "UPDATE repmgr.nodes SET priority = %s WHERE node_id = %s",
            (priority, node_id),
        )

    def event(self, node_id: int, event: str, details: str) -> None:
        """A row of ``repmgr.events`` as repmgr writes one (repmgr's event_notification_command is not run)."""
        self.session.query(
            "record an event in repmgr.events",
            "INSERT INTO repmgr.events (node_id, event, successful, details) VALUES (%s, %s, TRUE, %s)",
            (node_id, event, details),
        )

    def marker(self) -> str | None:
        """The pgcohort root the last adoption recorded (``init --from-repmgr``), if any."""
        rows = self.session.query(
            "read the adoption marker",
            "SELECT details FROM repmgr.events WHERE event = 'pgcohort_adopt' ORDER BY event_timestamp DESC LIMIT 1",
        )
        return str(rows[0][0]).rsplit(" ", 1)[-1] if rows else None

    def close(self) -> None:
        self.session.close()


def metadata(dsn: str, dbname: str | None = None) -> Metadata:
    """repmgr's tables on the server ``dsn`` reaches (in ``dbname``), over a session of their own whose commits
    do not wait for synchronous standbys: a new primary with the rule in force writes its metadata before any
    standby streams from it (repmgr's own writes wait; they are metadata, not acknowledged data)."""
    params = dsn_params(dsn)
    options = f"{params.get('options', '')} -c synchronous_commit=local".strip()
    return Metadata(Session(dsn_with(dsn, options=options, **({"dbname": dbname} if dbname else {}))))


def address(record: Record) -> tuple[str, int]:
    """Host and port of a node as repmgr reaches it (its ``conninfo``); InvalidInputError for a Unix socket."""
    params = dsn_params(record.conninfo)
    host = params.get("hostaddr") or params.get("host") or ""
    if not host or host.startswith("/"):
        raise InvalidInputError(
            f"repmgr reaches node {record.name} (ID {record.node_id}) by {'a Unix socket' if host else 'no host'} "
            "(its conninfo in repmgr.nodes); pgcohort needs an address every member reaches: register it with "
            "host=ADDRESS in conninfo"
        )
    return host, int(params.get("port") or 5432)


class RepmgrNode(Database):
    """A PostgreSQL server managed by repmgrd, known to repmgr by the member's name (``node_name``)."""

    def __init__(
        self,
        dsn: str,
        *,
        name: str,
        options: str,
        dbname: str = "repmgr",
        config_file: str | None = None,
        connect_timeout: float = 3.0,
    ) -> None:
        super().__init__(dsn, connect_timeout=connect_timeout)
        self.name = name
        self.options = options  # how to reach another member (its repmgr database: ``dbname``)
        self.dbname = dbname
        self.config_file = config_file
        self.meta = metadata(dsn, dbname)
        self._retry_at = 0.0

    def close(self) -> None:
        super().close()
        self.meta.close()

    def _remote(self, host: str, port: int) -> Metadata:
        return metadata(f"host={host.strip('[]')} port={port} {self.options}", self.dbname)

    # --- failover -----------------------------------------------------------------------

    def release(self) -> None:
        """Nothing: a refused gate leaves its fences (see the module docstring); an allowed one repoints."""

    def promote(self, *, timeout: int = 60, setting: Desired | None = None) -> None:
        """Promote with the rule in force, then record it in ``repmgr.nodes`` as ``repmgr standby promote`` does.

        A metadata write that fails is reported, not raised: the node is a primary by then, and the gate still
        has to confirm its term and repoint the others."""
        fence.promote(self.session, timeout=timeout, setting=setting)
        try:
            me = self._id(self.meta)
            self.meta.set_primary(me)
            self.meta.event(
                me, "standby_promote", f'server "{self.name}" (ID: {me}) was promoted to primary by pgcohort'
            )
        except PgcohortError as e:
            log.warning("pgcohort: %s was promoted, but repmgr's metadata could not be updated: %s", self.name, e)

    def follow(self, primary: Member) -> None:
        """Stream from ``primary`` (:func:`pgcohort.postgres.fence.follow`), and, once it is a primary, record the new
        upstream in ``repmgr.nodes`` on it as ``repmgr standby follow`` does: this node's repmgrd then restarts its
        monitoring against it. While it is still a standby (a hand-over before repmgr promotes it) repmgr's own
        ``follow_command`` records it later."""
        fence.follow(self.session, primary)
        remote = self._remote(primary.host, primary.port)
        try:
            if remote.writable():
                up, me = self._id(remote, primary.name), self._id(remote)
                remote.set_upstream(me, up)
                remote.event(
                    me, "standby_follow", f'standby "{self.name}" is now following "{primary.name}" (pgcohort)'
                )
        except PgcohortError as e:
            log.warning(
                "pgcohort: %s follows %s, but repmgr's metadata could not be updated: %s", self.name, primary.name, e
            )
        finally:
            remote.close()

    def _id(self, meta: Metadata, name: str | None = None) -> int:
        rec = meta.record(name or self.name)
        if rec is None:
            raise InvalidInputError(f"{name or self.name} is not registered with repmgr (no row in repmgr.nodes)")
        return rec.node_id

    # --- eligibility ------------------------------------------------------------------

    def set_eligible(self, eligible: bool) -> bool:
        """Keep this node's ``priority`` in ``repmgr.nodes`` at 0 outside the cohort and at its configured priority
        inside it; True when it was written. Written on the primary (read locally first: usually nothing to do)."""
        want = self._priority() if eligible else 0
        records = self.meta.records()
        mine = next((r for r in records if r.name == self.name), None)
        if mine is None or mine.priority == want or time.monotonic() < self._retry_at:
            return False
        if self.meta.writable():
            self.meta.set_priority(mine.node_id, want)
            return True
        primary = next((r for r in records if r.type == "primary" and r.active), None)
        if primary is None:
            return False
        remote = self._remote(*address(primary))
        try:
            remote.set_priority(mine.node_id, want)
        except PgcohortError:
            self._retry_at = time.monotonic() + RETRY_ELIGIBILITY  # no primary (a failover): try again later
            raise
        finally:
            remote.close()
        return True

    def _priority(self) -> int:
        """The ``priority`` line of this node's repmgr.conf (repmgr's own default without one)."""
        if not self.config_file:
            return DEFAULT_PRIORITY
        try:
            with open(self.config_file, encoding="utf-8") as f:
                for line in f:
                    key, _, value = line.partition("=")
                    if key.strip() == "priority" and value.strip().strip("'\"").isdigit():
                        return int(value.strip().strip("'\""))
        except OSError as e:
            raise InvalidInputError(f"cannot read repmgr.config_file {self.config_file!r}: {e.strerror}") from None
        return DEFAULT_PRIORITY


# --- the registry entry -------------------------------------------------------------------


def connector(cfg: Config) -> Callable[[Member], RepmgrNode]:
    """Reach any member by the host and port the ruleset records (the gate's survey, promotion and repoint)."""
    options, dbname = cfg["postgres.member_options"], cfg["repmgr.dbname"]
    return lambda m: RepmgrNode(
        f"host={m.host.strip('[]')} port={m.port} {options}", name=m.name, options=options, dbname=dbname
    )


class Repmgr:
    """The ``repmgr`` entry of the adapter registry (see :class:`pgcohort.assembly.Adapter`)."""

    name = "repmgr"
    wording = WORDING
    hook = HOOK
    adoption = "pgcohort init --from-repmgr CONNINFO"

    def node(self, cfg: Config, store: EtcdStore) -> RepmgrNode:
        return RepmgrNode(
            cfg["postgres.dsn"],
            name=cfg["node.name"],
            options=cfg["postgres.member_options"],
            dbname=cfg["repmgr.dbname"],
            config_file=cfg["repmgr.config_file"],
        )

    def connector(self, cfg: Config) -> Callable[[Member], RepmgrNode]:
        return connector(cfg)

    def preflight(self, cfg: Config, store: EtcdStore) -> str | None:
        return None  # repmgr never writes synchronous_standby_names: one owner

    def managed_by(self, cfg: Config, store: EtcdStore) -> str | None:
        """The root ``init --from-repmgr`` recorded in ``repmgr.events`` (replicated to every node), if readable."""
        meta = metadata(cfg["postgres.dsn"], cfg["repmgr.dbname"])
        try:
            return meta.marker()
        except PgcohortError:
            return None  # no metadata to read: gate.unmanaged decides
        finally:
            meta.close()

    def promotes(self) -> str | None:
        return None  # `pgcohort failover` promotes, and writes repmgr's metadata as repmgr would

    def adopt(self, source: str, cfg: Config, store: EtcdStore, *, policy: str, actor: str) -> list[str]:
        """``init --from-repmgr CONNINFO``: the primary and the standbys streaming from it, from ``repmgr.nodes``
        on the node CONNINFO reaches; then priority 0 for the standbys left out, and the adoption marker."""
        seen = metadata(source)
        try:
            records = seen.records()
        finally:
            seen.close()
        primary = next((r for r in records if r.type == "primary" and r.active), None)
        if primary is None:
            raise RefusedError("repmgr.nodes names no active primary; adopt the cluster once it has one")
        host, port = address(primary)
        on_primary = metadata(dsn_with(source, host=host, port=str(port)))
        try:
            if not on_primary.writable():
                raise RefusedError(
                    f"{primary.name} ({host}:{port}), repmgr's primary, is in recovery; nothing was changed"
                )
            streaming = {
                str(n) for (n,) in on_primary.session.query(
                    "read pg_stat_replication",
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                )
            }  # fmt: skip
            chosen = [Member(primary.name, host, port, primary.location)]
            skipped: list[Record] = []
            for r in records:
                if r.type == "standby" and r.active and r.name in streaming:
                    chosen.append(Member(r.name, *address(r), r.location))
                elif r.type == "standby":
                    skipped.append(r)
            done = protocol.init(store, Rule(parse_policy(policy), tuple(chosen)), primary.name, actor=actor)
            for r in skipped:
                on_primary.set_priority(r.node_id, 0)
            on_primary.event(primary.node_id, "pgcohort_adopt", f"pgcohort manages this cluster at {store.root}")
        finally:
            on_primary.close()
        rs = done.snapshot.ruleset
        lines = [
            f"adopted the repmgr cluster of primary {primary.name} (node ID {primary.node_id}) into {store.root}: "
            f"version 1 and term 1 at revision {done.snapshot.revision}",
            f"rule: {rs.show()}",
            f"the sidecar beside {primary.name} applies synchronous_standby_names = {rs.rule.render(primary.name)!r}",
        ]
        if skipped:
            lines.append(
                f"left out (not streaming from {primary.name}, or inactive): "
                f"{', '.join(r.name for r in skipped)}; priority 0 in repmgr.nodes until `pgcohort add` makes each "
                "a member"
            )
        return lines


ADAPTER = Repmgr()
