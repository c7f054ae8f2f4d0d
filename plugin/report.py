"""What ``pgcohort status`` shows: the committed ruleset, the term and every node, as one document.

Built from what the store read; the CLI only prints it (``--json`` prints it as is).
"""

from __future__ import annotations

from typing import Any

from pgcohort.core import steps
from pgcohort.core.node import NodeRecord
from pgcohort.core.rules import Member
from pgcohort.core.ruleset import Ruleset
from pgcohort.errors import PgcohortError
from pgcohort.seams import Snapshot, TermSnapshot


def membership(rs: Ruleset, name: str) -> str:
    """member, joining, leaving, benched (taken out by healing, admitted again once caught up), or candidate
    (registered but not in any active cohort)."""
    now_in = rs.rule.member(name) is not None
    before = rs.previous is None or rs.previous.member(name) is not None
    if now_in and before:
        return "member"
    if now_in:
        return "joining"
    if rs.previous is not None and rs.previous.member(name) is not None:
        return "leaving"
    if rs.bench_member(name) is not None:
        return "benched"
    return "candidate"


def status_document(root: str, snap: Snapshot, term: TermSnapshot, nodes: dict[str, NodeRecord]) -> dict[str, Any]:
    rs = snap.ruleset
    primary = term.term.primary
    members: dict[str, Member] = {}
    for r in rs.active_rules():
        for m in r.cohort:
            members.setdefault(m.name, m)
    for m in rs.benched:
        members.setdefault(m.name, m)
    primary_record = nodes.get(primary)
    replication = primary_record.replication if primary_record else {}
    rows = []
    for name in sorted(set(members) | set(nodes)):
        member = members.get(name)
        node = nodes.get(name)
        rep = replication.get(name)
        role = node.role if node and node.role != "unknown" else ("primary" if name == primary else None)
        if member is not None:
            host: str | None = f"{member.host}:{member.port}"
        else:
            host = f"{node.host}:{node.port}" if node and node.host else None
        rows.append(
            {
                "member": name,
                "zone": member.zone if member else (node.zone if node else None),
                "host": host,
                "role": role,
                "cohort": membership(rs, name),
                "seen_revision": node.seen_revision if node else None,
                "lag_bytes": rep.lag_bytes if rep else None,
                "sync_state": rep.sync_state if rep else None,
                "problem": (node.problem or node.fenced or node.postgres or None) if node else None,
            }
        )
    try:
        setting = steps.desired(rs, snap.revision, primary, primary).setting
    except PgcohortError as e:
        setting = f"(cannot render: {e})"
    return {
        "cluster": root,
        "version": rs.version,
        "revision": snap.revision,
        "phase": rs.phase,
        "rule": rs.show(),
        "benched": [m.name for m in rs.benched],
        "change": rs.reason if rs.phase == "joint" else None,
        "changed_by": rs.changed_by,
        "changed_at": rs.changed_at,
        "term": term.term.term,
        "primary": primary,
        "confirmed": term.confirmed,
        "reference": term.reference,
        "timeline": term.timeline.id if term.timeline else None,
        "synchronous_standby_names": setting,
        "members": rows,
    }
