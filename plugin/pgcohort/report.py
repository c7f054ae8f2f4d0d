"""What ``pgcohort status`` and ``pgcohort history`` show: documents built from what the store read, and their text.

The CLI prints :func:`status_text` or, with ``--json``, the document as is; likewise the
history tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pgcohort.core import steps
from pgcohort.core.failover import format_lsn
from pgcohort.core.node import NodeRecord
from pgcohort.core.rules import Member
from pgcohort.core.ruleset import Ruleset, to_record
from pgcohort.core.term import Confirmation, Term, confirmation_to_record, term_to_record
from pgcohort.errors import PgcohortError
from pgcohort.seams import Revision, Snapshot, TermSnapshot


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


def status_text(doc: dict[str, Any]) -> str:
    """The status document for people."""
    lines = [
        f"Cluster {doc['cluster']}  version {doc['version']} (revision {doc['revision']})  phase {doc['phase']}",
        f"Rule: {doc['rule']}",
    ]
    if doc["benched"]:
        lines.append(f"Benched (admitted again once they stream and catch up): {' '.join(doc['benched'])}")
    if doc["change"]:
        lines.append(f"Change in progress: {doc['change']} (by {doc['changed_by']} at {doc['changed_at']})")
    seen = (
        f"seen running on timeline {doc['timeline']}"
        if doc["confirmed"] and doc["timeline"]
        else "seen running"
        if doc["confirmed"]
        else f"not seen running yet; a failover reasons from {doc['reference']}, the last primary seen running"
    )
    lines.append(f"Term {doc['term']}: primary {doc['primary']} ({seen})")
    lines.append(f"synchronous_standby_names of the committed rule: {doc['synchronous_standby_names']}")
    rows = [
        [r["member"], r["zone"], r["host"], r["role"], r["cohort"], r["sync_state"], r["lag_bytes"], r["seen_revision"]]
        for r in doc["members"]
    ]
    lines.append(
        table(["Member", "Zone", "Host", "Role", "Cohort", "Sync state", "Lag (bytes)", "Seen revision"], rows)
    )
    return "\n".join(lines)


def history_document(entries: Sequence[tuple[Revision, Ruleset]]) -> list[dict[str, Any]]:
    return [{"revision": rev, **to_record(rs)} for rev, rs in entries]


def history_text(entries: Sequence[tuple[Revision, Ruleset]]) -> str:
    rows = [[rs.version, rev, rs.phase, rs.show(), rs.reason, rs.changed_by, rs.changed_at] for rev, rs in entries]
    return table(["Version", "Revision", "Phase", "Rule", "Change", "By", "At"], rows)


def term_history_document(
    terms: Sequence[tuple[Revision, Term]], confirmations: Sequence[tuple[Revision, Confirmation]]
) -> list[dict[str, Any]]:
    seen = {c.term: c for _, c in confirmations}
    return [
        {"revision": rev, **term_to_record(t),
         "confirmed": confirmation_to_record(seen[t.term]) if t.term in seen else None}
        for rev, t in terms
    ]  # fmt: skip


def term_history_text(
    terms: Sequence[tuple[Revision, Term]], confirmations: Sequence[tuple[Revision, Confirmation]]
) -> str:
    seen = {c.term: c for _, c in confirmations}

    def running(t: Term) -> str:
        c = seen.get(t.term)
        if c is None:
            return "never seen running" if any(n > t.term for n in seen) else "-"
        return f"{c.at or 'at init'}" + (f" (timeline {c.timeline.id})" if c.timeline else "")

    rows = [
        [t.term, rev, t.primary, t.ruleset_revision or "-", format_lsn(t.lsn) if t.lsn is not None else "-",
         t.decided_by, t.at, running(t), t.forced or "-"]
        for rev, t in terms
    ]  # fmt: skip
    header = ["Term", "Revision", "Primary", "Ruleset rev", "LSN", "Decided by", "At", "Seen running", "Forced"]
    return table(header, rows)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header)] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return "\n".join([line, fmt(cells[0]), line] + [fmt(r) for r in cells[1:]] + [line])
