"""The ``pgcohort`` command. Thin: parse, load configuration, call the protocol, print.

Exit codes (one per error class, see :mod:`plugin.errors`): 0 done, 2 invalid input,
3 refused by the rules, 4 conflict, 5 etcd unavailable, 6 indeterminate write,
7 invalid record in etcd, 8 not initialized, 9 PostgreSQL unreachable or not done, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any

from plugin import config, protocol
from plugin.core import ruleset as core
from plugin.core.rules import Member, Rule, parse_policy
from plugin.errors import InvalidInputError, PgcohortError
from plugin.store import EtcdStore, Revision, Snapshot, TermSnapshot

_MEMBER_SPEC = re.compile(r"(?P<name>[^@/]+)(?:@(?P<host>\[[^\]]+\]|[^/:\[]+)(?::(?P<port>\d+))?)?(?:/(?P<zone>.+))?")

EXIT_CODES = """exit codes:
  0 done   2 invalid input   3 refused by the rules   4 conflict (stale revision)
  5 etcd unavailable   6 indeterminate write   7 invalid record in etcd
  8 not initialized   9 PostgreSQL unreachable or not done   130 interrupted"""


def parse_member(spec: str, *, host: str | None = None, port: int | None = None, zone: str | None = None) -> Member:
    """``NAME[@HOST[:PORT]][/ZONE]``, with flags filling in what the spec leaves out."""
    m = _MEMBER_SPEC.fullmatch(spec)
    if not m:
        raise InvalidInputError(
            f"invalid member {spec!r}: write NAME[@HOST[:PORT]][/ZONE], e.g. pg1@10.0.0.5:5432/zone-a"
        )
    return Member(
        m["name"],
        m["host"] or host or "127.0.0.1",
        int(m["port"]) if m["port"] else (port or 5432),
        m["zone"] or zone or "default",
    )


def _actor() -> str:
    return os.environ.get("PGCOHORT_ACTOR") or f"{os.environ.get('USER', 'cli')}@{socket.gethostname()}"


def _config(args: argparse.Namespace, need: tuple[str, ...] = ()) -> config.Config:
    flags = {
        "cluster": args.cluster,
        "etcd.endpoints": args.etcd,
        "etcd.prefix": args.prefix,
        "etcd.timeout": args.timeout,
        "node.name": getattr(args, "name", None),
        "postgres.dsn": getattr(args, "dsn", None),
        "sidecar.listen": getattr(args, "listen", None),
    }
    return config.load(flags, file=args.config, need=need)


def _store(args: argparse.Namespace, cfg: config.Config | None = None, **kw: Any) -> EtcdStore:
    cfg = cfg or _config(args)
    return EtcdStore(
        cfg["etcd.endpoints"],
        cfg["cluster"],
        prefix=cfg["etcd.prefix"],
        timeout=cfg["etcd.timeout"],
        retry_for=cfg["etcd.retry_for"],
        user=cfg["etcd.user"],
        password=cfg["etcd.password"],
        **kw,
    )


# --- output --------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header)] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return "\n".join([line, fmt(cells[0]), line] + [fmt(r) for r in cells[1:]] + [line])


def _membership(rs: core.Ruleset, name: str) -> str:
    now_in = rs.rule.member(name) is not None
    before = rs.previous is None or rs.previous.member(name) is not None
    if now_in and before:
        return "member"
    if now_in:
        return "joining"
    if rs.previous is not None and rs.previous.member(name) is not None:
        return "leaving"
    return "candidate"


def status_document(
    cluster: str, snap: Snapshot, term: TermSnapshot, nodes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    rs = snap.ruleset
    primary = term.term.primary
    members: dict[str, Member] = {}
    for r in rs.active_rules():
        for mm in r.cohort:
            members.setdefault(mm.name, mm)
    replication = nodes.get(primary, {}).get("replication") or {}
    rows = []
    for name in sorted(set(members) | set(nodes)):
        m = members.get(name)
        node = nodes.get(name, {})
        rep = replication.get(name) if isinstance(replication, dict) else None
        role = node.get("role") or ("primary" if name == primary else None)
        rows.append(
            {
                "member": name,
                "zone": m.zone if m else node.get("zone"),
                "host": f"{m.host}:{m.port}" if m else (f"{node['host']}:{node['port']}" if "host" in node else None),
                "role": role,
                "cohort": _membership(rs, name),
                "seen_revision": node.get("seen_revision"),
                "lag_bytes": rep.get("lag_bytes") if isinstance(rep, dict) else None,
                "sync_state": rep.get("sync_state") if isinstance(rep, dict) else None,
            }
        )
    try:
        setting = rs.rule.render(primary)
    except PgcohortError as e:
        setting = f"(cannot render: {e})"
    return {
        "cluster": cluster,
        "version": rs.version,
        "revision": snap.revision,
        "phase": rs.phase,
        "rule": rs.show(),
        "change": rs.reason if rs.phase == "joint" else None,
        "changed_by": rs.changed_by,
        "changed_at": rs.changed_at,
        "term": term.term.term,
        "primary": primary,
        "synchronous_standby_names": setting,
        "members": rows,
    }


# --- commands ------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    members = tuple(parse_member(s) for s in args.member)
    rule = Rule(parse_policy(args.policy), members)
    store = _store(args)
    done = protocol.init(store, rule, args.primary, actor=_actor())
    print(f"initialized {store.root}: version 1 at revision {done.snapshot.revision}, term 1 (primary {args.primary})")
    print(f"rule: {rule.show()}")
    print(f"synchronous_standby_names: {rule.render(args.primary)}")
    return 0


def _report_change(done: protocol.Committed) -> None:
    rs = done.snapshot.ruleset
    extra = f" after {done.conflicts} conflict(s), re-validated each time" if done.conflicts else ""
    print(f"committed version {rs.version} at revision {done.snapshot.revision}{extra}: {rs.reason}")
    print(f"phase {rs.phase}: {rs.show()}")
    if rs.phase == "joint":
        print("both rules hold until the sidecar beside the primary has applied and finalized the change")


def cmd_add(args: argparse.Namespace) -> int:
    member = parse_member(args.member, host=args.host, port=args.port, zone=args.zone)
    _report_change(protocol.change(_store(args), core.AddMember(member), actor=_actor()))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    _report_change(protocol.change(_store(args), core.RemoveMember(args.member), actor=_actor()))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    _report_change(protocol.change(_store(args), core.SetPolicy(parse_policy(args.policy)), actor=_actor()))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    if not args.without_barrier:
        raise InvalidInputError(
            "finalize is the sidecar's step after it applied the rule and a barrier commit was "
            "acknowledged. By hand it skips that proof: pass --without-barrier only when no "
            "PostgreSQL enforces this ruleset yet. Nothing was changed"
        )
    expected = Revision(args.revision) if args.revision is not None else None
    done = protocol.finish(_store(args), actor=_actor(), expected=expected)
    _report_change(done)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    snap, term = store.read_both()
    doc = status_document(store.root, snap, term, store.nodes())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Cluster {store.root}  version {doc['version']} (revision {doc['revision']})  phase {doc['phase']}")
    print(f"Rule: {doc['rule']}")
    if doc["change"]:
        print(f"Change in progress: {doc['change']} (by {doc['changed_by']} at {doc['changed_at']})")
    print(f"Term {doc['term']}: primary {doc['primary']}")
    print(f"synchronous_standby_names of the committed rule: {doc['synchronous_standby_names']}")
    rows = [
        [r["member"], r["zone"], r["host"], r["role"], r["cohort"], r["sync_state"], r["lag_bytes"], r["seen_revision"]]
        for r in doc["members"]
    ]
    print(_table(["Member", "Zone", "Host", "Role", "Cohort", "Sync state", "Lag (bytes)", "Seen revision"], rows))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    entries = _store(args).history()
    if args.json:
        print(json.dumps([{"revision": rev, **core.to_record(rs)} for rev, rs in entries], indent=2))
        return 0
    rows = [[rs.version, rev, rs.phase, rs.show(), rs.reason, rs.changed_by, rs.changed_at] for rev, rs in entries]
    print(_table(["Version", "Revision", "Phase", "Rule", "Change", "By", "At"], rows))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    watch = _store(args).watch(since=Revision(args.since) if args.since is not None else None)
    seen = 0
    try:
        for view in watch:
            if args.json:
                rec = core.to_record(view.ruleset) if view.ruleset else None
                print(
                    json.dumps({"revision": view.revision, "ruleset": rec, "problem": view.problem or None}), flush=True
                )
            elif view.ruleset is None:
                print(f"revision {view.revision}: {view.problem}", flush=True)
            else:
                rs = view.ruleset
                print(
                    f"revision {view.revision}: version {rs.version} {rs.phase} {rs.show()}  [{rs.reason}]", flush=True
                )
            seen += 1
            if args.count and seen >= args.count:
                break
    finally:
        watch.close()
    return 0


def cmd_sidecar(args: argparse.Namespace) -> int:
    import logging
    import threading

    from adapters.postgres import PostgresNode
    from plugin import api, sidecar
    from plugin.metrics import Metrics

    cfg = _config(args, need=("node.name",))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {cfg['node.name']} %(levelname)s %(message)s")
    metrics = Metrics(cfg["node.name"])
    store = _store(args, cfg, observe=metrics.observe_etcd)
    metrics.watch_store(store.stats)
    settings = sidecar.Settings(
        name=cfg["node.name"],
        zone=cfg["node.zone"],
        host=cfg["node.host"],
        port=cfg["node.port"],
        interval=cfg["sidecar.interval"],
        ttl=cfg["sidecar.ttl"],
        barrier_timeout=cfg["sidecar.barrier_timeout"],
        auto_admit=cfg["sidecar.auto_admit"],
        admit_max_lag=cfg["sidecar.admit_max_lag"],
        admit_stable_for=cfg["sidecar.admit_stable_for"],
        leave_timeout=cfg["sidecar.leave_timeout"],
    )
    car = sidecar.Sidecar(settings, store, PostgresNode(cfg["postgres.dsn"]), metrics)
    host, _, port = cfg["sidecar.listen"].rpartition(":")
    try:
        server = api.serve(car, host or "127.0.0.1", int(port))
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot listen on {cfg['sidecar.listen']!r}: {e}") from None
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    leaving = threading.Event()
    sidecar.install_signal_handlers(car, leaving)
    logging.info(
        "sidecar for %s: http://%s/health, etcd %s",
        settings.name,
        cfg["sidecar.listen"],
        ", ".join(cfg["etcd.endpoints"]),
    )
    car.run()
    server.shutdown()
    if leaving.is_set():
        logging.info("SIGTERM: %s", sidecar.leave(store, settings.name, timeout=settings.leave_timeout))
    return 0


def _connect(cfg: config.Config) -> Any:
    from adapters.postgres import PostgresNode

    options = cfg["postgres.member_options"]
    return lambda m: PostgresNode(f"host={m.host.strip('[]')} port={m.port} {options}")


def _report_gate(outcome: Any, promoted: bool) -> None:
    t = outcome.term
    print(str(outcome.decision))
    if outcome.survey.unreachable:
        for name, why in sorted(outcome.survey.unreachable.items()):
            print(f"  unreachable {name}: {why}")
    stale = f" after {outcome.attempts - 1} stale view(s) re-read" if outcome.attempts > 1 else ""
    print(
        f"term {t.term} committed at revision {outcome.term_revision}{stale}: primary {t.primary} (ruleset revision {t.ruleset_revision})"
    )
    if t.forced:
        print(f"FORCED: {t.forced}")
    print(f"promoted {t.primary}" if promoted else f"{t.primary} may now be promoted")


def cmd_gate(args: argparse.Namespace) -> int:
    from plugin import gate

    cfg = _config(args)
    candidate = args.candidate or cfg["node.name"]
    if not candidate:
        raise InvalidInputError("gate needs --candidate (or PGCOHORT_NODE_NAME): the node about to be promoted")
    outcome = gate.gate(
        _store(args, cfg), _connect(cfg), actor=_actor(), writer=protocol.new_writer(_actor()), candidate=candidate
    )
    _report_gate(outcome, promoted=False)
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    from plugin import gate

    cfg = _config(args)
    outcome = gate.failover(
        _store(args, cfg),
        _connect(cfg),
        actor=_actor(),
        writer=protocol.new_writer(_actor()),
        candidate=args.candidate,
        allow_data_loss=args.allow_data_loss,
    )
    _report_gate(outcome, promoted=True)
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    from plugin import sidecar

    cfg = _config(args, need=("node.name",))
    print(sidecar.leave(_store(args, cfg), cfg["node.name"], timeout=cfg["sidecar.leave_timeout"]))
    return 0


# --- parser --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection (flags > PGCOHORT_* environment > --config file > defaults)")
    g.add_argument("--cluster", help="cluster name (PGCOHORT_CLUSTER)")
    g.add_argument("--etcd", metavar="URLS", help="comma-separated etcd endpoints (PGCOHORT_ETCD_ENDPOINTS)")
    g.add_argument("--prefix", help="key prefix, default /pgcohort (PGCOHORT_ETCD_PREFIX)")
    g.add_argument("--timeout", type=float, help="seconds per etcd request, default 3 (PGCOHORT_ETCD_TIMEOUT)")
    g.add_argument("--config", metavar="FILE", help="YAML configuration file (PGCOHORT_CONFIG)")

    p = argparse.ArgumentParser(
        prog="pgcohort",
        description="Keep a PostgreSQL cluster's cohort and durability policy as one versioned, "
        "compare-and-swapped ruleset in etcd.",
        epilog="settings (YAML key, environment variable):\n" + config.describe() + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, fn: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(fn=fn)
        return sp

    sp = add("init", "create the ruleset (version 1) and term 1 naming the primary, if none exist", cmd_init)
    sp.add_argument(
        "--member",
        action="append",
        required=True,
        metavar="NAME[@HOST[:PORT]][/ZONE]",
        help="a cohort member; repeat for each (the primary included)",
    )
    sp.add_argument("--primary", required=True, help="the current primary (must be a member)")
    sp.add_argument("--policy", default="any 1", help="'any K' or 'cross-zone' (default: any 1)")

    sp = add("add", "propose adding a member (starts the joint phase)", cmd_add)
    sp.add_argument("member", metavar="NAME[@HOST[:PORT]][/ZONE]")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--zone")

    sp = add("remove", "propose removing a member (starts the joint phase)", cmd_remove)
    sp.add_argument("member", metavar="NAME")

    sp = add("policy", "propose a new durability policy: 'any K' or 'cross-zone'", cmd_policy)
    sp.add_argument("policy")

    sp = add("status", "the committed ruleset, term and members, like `patronictl list`", cmd_status)
    sp.add_argument("--json", action="store_true")

    sp = add("history", "every committed ruleset version (the audit log)", cmd_history)
    sp.add_argument("--json", action="store_true")

    sp = add("watch", "print each committed ruleset as it changes", cmd_watch)
    sp.add_argument("--since", type=int, metavar="REVISION", help="replay every change after this revision")
    sp.add_argument("--count", type=int, help="stop after this many rulesets")
    sp.add_argument("--json", action="store_true")

    sp = add(
        "sidecar",
        "run beside one PostgreSQL node: publish its status, apply committed rulesets on the primary, serve "
        "/health /ruleset /metrics; on SIGTERM leave the cohort first",
        cmd_sidecar,
    )
    sp.add_argument("--name", help="this node's member name (PGCOHORT_NODE_NAME)")
    sp.add_argument("--dsn", help="libpq DSN of this node's PostgreSQL (PGCOHORT_POSTGRES_DSN)")
    sp.add_argument("--listen", metavar="HOST:PORT", help="HTTP address (PGCOHORT_SIDECAR_LISTEN)")

    sp = add("leave", "remove this node from the cohort through the protocol and wait for the finalize", cmd_leave)
    sp.add_argument("--name", help="this node's member name (PGCOHORT_NODE_NAME)")

    sp = add(
        "failover",
        "revoke and survey the cohort, check the failover rule against every active rule, record the new term "
        "(CAS on the ruleset and term revisions), then promote",
        cmd_failover,
    )
    sp.add_argument("--candidate", help="promote this member (default: the most advanced eligible one)")
    sp.add_argument(
        "--allow-data-loss",
        action="store_true",
        help="when too few members survive for a safe failover, promote anyway; recorded in the term and its history",
    )

    sp = add(
        "gate",
        "for an HA manager's pre-promote hook: exit 0 only if the failover rule allows promoting the candidate and "
        "the new term naming it is committed",
        cmd_gate,
    )
    sp.add_argument("--candidate", help="the member about to be promoted (default: PGCOHORT_NODE_NAME)")
    sp.add_argument("--name", help=argparse.SUPPRESS)

    sp = add("finalize", "end the joint phase by hand (normally the sidecar's step, after its barrier)", cmd_finalize)
    sp.add_argument(
        "--without-barrier", action="store_true", help="required: you assert no PostgreSQL enforces this ruleset yet"
    )
    sp.add_argument("--revision", type=int, help="only if the ruleset is still at this revision")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except PgcohortError as e:
        print(f"pgcohort {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
