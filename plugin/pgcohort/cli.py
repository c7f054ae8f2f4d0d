"""The ``pgcohort`` command: parse, load the configuration, call, print. Nothing else.

What each command does is a function of :mod:`pgcohort.commands` (tests call them directly);
member specs are parsed by the core (:func:`pgcohort.core.rules.parse_member`), the status
document is built by :mod:`pgcohort.report`, and the exit codes come from the error tree
(:func:`pgcohort.errors.exit_codes`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from pgcohort import assembly, commands, config, gate, protocol, report
from pgcohort.core import ruleset as core
from pgcohort.core.rules import parse_member, parse_policy
from pgcohort.errors import InvalidInputError, PgcohortError, exit_codes
from pgcohort.seams import Revision
from pgcohort.store import EtcdStore
from pgcohort.version import __version__

EXIT_CODES = exit_codes()


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


def _store(args: argparse.Namespace) -> EtcdStore:
    return assembly.store(_config(args))


# --- output --------------------------------------------------------------------------


# --- commands ------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.from_patroni and args.from_repmgr:
        raise InvalidInputError("init adopts one cluster: pass --from-patroni URL or --from-repmgr CONNINFO, not both")
    if args.from_patroni:
        lines = commands.adopt(cfg, "patroni", args.from_patroni, args.policy)
    elif args.from_repmgr:
        lines = commands.adopt(cfg, "repmgr", args.from_repmgr, args.policy)
    elif not args.member or not args.primary:
        raise InvalidInputError(
            "init needs --member (one per member) and --primary, or --from-patroni URL, or --from-repmgr CONNINFO"
        )
    else:
        lines = commands.init(cfg, args.member, args.primary, args.policy)
    print("\n".join(lines))
    return 0


def _report_change(done: protocol.Committed) -> None:
    rs = done.snapshot.ruleset
    extra = f" after {done.conflicts} conflict(s), re-validated each time" if done.conflicts else ""
    print(f"committed version {rs.version} at revision {done.snapshot.revision}{extra}: {rs.reason}")
    if done.superseded:
        print(f"note: {done.superseded}")
        return
    print(f"phase {rs.phase}: {rs.show()}")
    if rs.phase == "joint":
        print("both rules hold until the sidecar beside the primary has applied and finalized the change")


def cmd_add(args: argparse.Namespace) -> int:
    member = parse_member(args.member, host=args.host, port=args.port, zone=args.zone)
    _report_change(commands.propose(_config(args), core.AddMember(member)))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    _report_change(commands.propose(_config(args), core.RemoveMember(args.member)))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    _report_change(commands.propose(_config(args), core.SetPolicy(parse_policy(args.policy))))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    if not args.without_barrier:
        raise InvalidInputError(
            "finalize is the sidecar's step after it applied the rule and a barrier commit was "
            "acknowledged. By hand it skips that proof: pass --without-barrier only when no "
            "PostgreSQL enforces this ruleset yet. Nothing was changed"
        )
    _report_change(commands.finalize_by_hand(_config(args), args.revision))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    snap, term = store.read_both()
    doc = report.status_document(store.root, snap, term, store.nodes())
    print(json.dumps(doc, indent=2) if args.json else report.status_text(doc))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.terms:
        terms, seen = store.term_history(), store.confirmation_history()
        doc = report.term_history_document(terms, seen)
        print(json.dumps(doc, indent=2) if args.json else report.term_history_text(terms, seen))
        return 0
    entries = store.history()
    print(json.dumps(report.history_document(entries), indent=2) if args.json else report.history_text(entries))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    for what in commands.restore(_config(args)):
        print(f"restored {what}")
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
    cfg = _config(args, need=("node.name",))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {cfg['node.name']} %(levelname)s %(message)s")
    logging.info("%s", commands.sidecar(cfg))
    return 0


def _report_gate(outcome: gate.Outcome, promoted: bool, out: TextIO | None = None) -> None:
    def say(line: str) -> None:
        print(line, file=out or sys.stdout)

    t = outcome.term
    based_on = outcome.based_on
    if based_on is not None and outcome.reference != based_on.term.primary:
        say(
            f"reasoned from {outcome.reference}, the last primary seen running: term {based_on.term.term} named "
            f"{based_on.term.primary}, which was never seen running as a primary"
        )
    say(str(outcome.decision))
    if outcome.survey.unreachable:
        for name, why in sorted(outcome.survey.unreachable.items()):
            say(f"  unreachable {name}: {why}")
    stale = f" after {outcome.attempts - 1} stale view(s) re-read" if outcome.attempts > 1 else ""
    say(
        f"term {t.term} committed at revision {outcome.term_revision}{stale}: primary {t.primary} (ruleset revision {t.ruleset_revision})"
    )
    if t.forced:
        say(f"FORCED: {t.forced}")
    say(f"promoted {t.primary}" if promoted else f"{t.primary} may now be promoted")
    if promoted or outcome.followers:
        repointed = sorted(set(outcome.survey.positions) - {t.primary} - set(outcome.followers))
        if repointed and promoted:
            say(f"following {t.primary} again: {', '.join(repointed)}")
        for name, why in sorted(outcome.followers.items()):
            say(f"  NOT repointed {name}: {why}; set its primary_conninfo to {t.primary} by hand")


def cmd_gate(args: argparse.Namespace) -> int:
    verdict = commands.gate_check(_config(args), args.candidate, allow_data_loss=args.allow_data_loss)
    out = sys.stderr if verdict.one_line else sys.stdout  # one line: the HA manager reads no more (repmgr)
    if verdict.warning:
        print(verdict.warning, file=sys.stderr)
    if verdict.message:
        print(verdict.message, file=out)
    if verdict.outcome is not None:
        _report_gate(verdict.outcome, promoted=False, out=out)
    if verdict.one_line:
        print(verdict.line(), flush=True)  # the last thing written: nothing meets the pipe the reader closed
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    _report_gate(commands.failover(_config(args), args.candidate, allow_data_loss=args.allow_data_loss), promoted=True)
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    print(commands.leave(_config(args, need=("node.name",))))
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
    p.add_argument("--version", action="version", version=f"pgcohort {__version__}")
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

    sp = add(
        "init",
        "create the ruleset (version 1) and term 1 naming the primary, if none exist; or adopt a Patroni or repmgr "
        "cluster",
        cmd_init,
    )
    sp.add_argument(
        "--member",
        action="append",
        metavar="NAME[@HOST[:PORT]][/ZONE]",
        help="a cohort member; repeat for each (the primary included)",
    )
    sp.add_argument("--primary", help="the current primary (must be a member)")
    sp.add_argument(
        "--from-patroni",
        metavar="URL",
        help="take the members (running and streaming; zone from the 'zone' tag) and the leader from Patroni's "
        "REST API, and switch Patroni from its synchronous_mode to the rendered setting in the same etcd "
        "transaction (no moment of asynchronous commits)",
    )
    sp.add_argument(
        "--from-repmgr",
        metavar="CONNINFO",
        help="take the members (active, streaming from the primary; zone from repmgr's location) and the primary "
        "from repmgr's metadata (repmgr.nodes) on the node CONNINFO reaches, give the standbys left out "
        "priority 0 in repmgr.nodes, and leave the setting to the primary's sidecar",
    )
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

    sp = add("history", "every committed ruleset version (the audit log); --terms: every failover term", cmd_history)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--terms", action="store_true", help="the term history: who was promoted, when, decided by whom")

    sp = add("watch", "print each committed ruleset as it changes", cmd_watch)
    sp.add_argument("--since", type=int, metavar="REVISION", help="replay every change after this revision")
    sp.add_argument("--count", type=int, help="stop after this many rulesets")
    sp.add_argument("--json", action="store_true")

    sp = add(
        "sidecar",
        "run beside one PostgreSQL node: publish its status, confirm its term and apply committed rulesets on the "
        "primary, serve /health /ruleset /metrics; SIGTERM stops it and the node stays a member (a restart or an "
        "upgrade never shrinks the rule); `pgcohort leave`, or sidecar.leave_on_stop, removes it",
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
        "for an HA manager's pre-promote hook (Patroni's pre_promote, repmgr's failover_validation_command): exit "
        "0 only if the candidate is the primary the current term names, or the failover rule allows promoting it "
        "and the new term naming it is committed (under repmgr also: the rule in force on it, the surveyed members "
        "repointed to it; a refused candidate gets the member the rule allows promoted instead, and still exit 3)",
        cmd_gate,
    )
    sp.add_argument("--candidate", help="the member about to be promoted (default: node.name)")
    sp.add_argument("--name", help=argparse.SUPPRESS)
    sp.add_argument(
        "--allow-data-loss",
        action="store_true",
        help="by hand, when too few members survive: record a forced term naming the candidate (then let the HA "
        "manager promote it, e.g. `patronictl failover --candidate NAME`); recorded in the term and its history",
    )

    add(
        "restore",
        "after a record in etcd was found invalid (exit 7): commit its newest valid history entry again, as the "
        "next version, with one CAS; refused while the ruleset and term are valid",
        cmd_restore,
    )

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
