"""The ``pgcohort`` command: parse, load the configuration, call, print. Nothing else.

Member specs are parsed by the core (:func:`pgcohort.core.rules.parse_member`), the status
document is built by :mod:`pgcohort.report`, the pieces are built by
:mod:`pgcohort.assembly`, and the exit codes come from the error tree
(:func:`pgcohort.errors.exit_codes`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from pgcohort import __version__, assembly, config, gate, protocol, report
from pgcohort.core import ruleset as core
from pgcohort.core.decision import GateDecision, Result
from pgcohort.core.failover import format_lsn
from pgcohort.core.rules import Rule, parse_member, parse_policy
from pgcohort.core.term import Term
from pgcohort.core.term import confirmation_to_record as confirmation_record
from pgcohort.core.term import term_to_record as term_record
from pgcohort.errors import InvalidInputError, NotInitializedError, PgcohortError, RefusedError, exit_codes
from pgcohort.seams import Revision
from pgcohort.store import EtcdStore

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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header)] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return "\n".join([line, fmt(cells[0]), line] + [fmt(r) for r in cells[1:]] + [line])


# --- commands ------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    if args.from_patroni:
        return _adopt(args)
    if not args.member or not args.primary:
        raise InvalidInputError("init needs --member (one per member) and --primary, or --from-patroni URL")
    members = tuple(parse_member(s) for s in args.member)
    rule = Rule(parse_policy(args.policy), members)
    store = _store(args)
    done = protocol.init(store, rule, args.primary, actor=assembly.actor())
    print(f"initialized {store.root}: version 1 at revision {done.snapshot.revision}, term 1 (primary {args.primary})")
    print(f"rule: {rule.show()}")
    print(f"synchronous_standby_names: {rule.render(args.primary)}")
    return 0


def _adopt(args: argparse.Namespace) -> int:
    """``init --from-patroni``: the members and leader from Patroni, and the switch from its sync mode, at once."""
    cfg = _config(args)
    members, skipped, leader, scope = assembly.patroni_cluster(args.from_patroni, cfg)
    if cfg["patroni.scope"] and scope and cfg["patroni.scope"] != scope:
        raise InvalidInputError(
            f"Patroni at {args.from_patroni} runs scope {scope!r} but patroni.scope is {cfg['patroni.scope']!r}; "
            "nothing was changed"
        )
    rule = Rule(parse_policy(args.policy), tuple(members))
    rs, term = protocol.first(rule, leader, actor=assembly.actor())
    store = assembly.store(cfg)
    key = assembly.patroni_key(cfg, store, scope)
    before = key.read()
    setting = rule.render(leader)
    rev = key.adopt(rs, term, before, setting)
    print(
        f"adopted Patroni scope {scope!r} into {store.root}: version 1 and term 1 (primary {leader}) at revision {rev}"
    )
    print(f"rule: {rule.show()}")
    if skipped:
        print(f"left out (not streaming): {', '.join(skipped)}; add them with `pgcohort add` once they stream")
    was = before.value.get("synchronous_mode", False)
    print(
        f"in the same transaction {key.key}: synchronous_mode {was!r} -> false, "
        f"synchronous_standby_names {before.setting!r} -> {setting!r}"
    )
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
    _report_change(protocol.propose(_store(args), core.AddMember(member), actor=assembly.actor()))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    _report_change(protocol.propose(_store(args), core.RemoveMember(args.member), actor=assembly.actor()))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    _report_change(protocol.propose(_store(args), core.SetPolicy(parse_policy(args.policy)), actor=assembly.actor()))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    if not args.without_barrier:
        raise InvalidInputError(
            "finalize is the sidecar's step after it applied the rule and a barrier commit was "
            "acknowledged. By hand it skips that proof: pass --without-barrier only when no "
            "PostgreSQL enforces this ruleset yet. Nothing was changed"
        )
    expected = Revision(args.revision) if args.revision is not None else None
    done = protocol.finalize(_store(args), actor=assembly.actor(), expected=expected)
    _report_change(done)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    snap, term = store.read_both()
    doc = report.status_document(store.root, snap, term, store.nodes())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Cluster {store.root}  version {doc['version']} (revision {doc['revision']})  phase {doc['phase']}")
    print(f"Rule: {doc['rule']}")
    if doc["benched"]:
        print(f"Benched (admitted again once they stream and catch up): {' '.join(doc['benched'])}")
    if doc["change"]:
        print(f"Change in progress: {doc['change']} (by {doc['changed_by']} at {doc['changed_at']})")
    seen = (
        f"seen running on timeline {doc['timeline']}"
        if doc["confirmed"] and doc["timeline"]
        else "seen running"
        if doc["confirmed"]
        else f"not seen running yet; a failover reasons from {doc['reference']}, the last primary seen running"
    )
    print(f"Term {doc['term']}: primary {doc['primary']} ({seen})")
    print(f"synchronous_standby_names of the committed rule: {doc['synchronous_standby_names']}")
    rows = [
        [r["member"], r["zone"], r["host"], r["role"], r["cohort"], r["sync_state"], r["lag_bytes"], r["seen_revision"]]
        for r in doc["members"]
    ]
    print(_table(["Member", "Zone", "Host", "Role", "Cohort", "Sync state", "Lag (bytes)", "Seen revision"], rows))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    if args.terms:
        return _term_history(args)
    entries = _store(args).history()
    if args.json:
        print(json.dumps([{"revision": rev, **core.to_record(rs)} for rev, rs in entries], indent=2))
        return 0
    rows = [[rs.version, rev, rs.phase, rs.show(), rs.reason, rs.changed_by, rs.changed_at] for rev, rs in entries]
    print(_table(["Version", "Revision", "Phase", "Rule", "Change", "By", "At"], rows))
    return 0


def _term_history(args: argparse.Namespace) -> int:
    store = _store(args)
    terms = store.term_history()
    seen = {c.term: c for _, c in store.confirmation_history()}
    if args.json:
        print(
            json.dumps(
                [
                    {"revision": rev, **term_record(t),
                     "confirmed": confirmation_record(seen[t.term]) if t.term in seen else None}
                    for rev, t in terms
                ],
                indent=2,
            )
        )  # fmt: skip
        return 0

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
    print(
        _table(
            ["Term", "Revision", "Primary", "Ruleset rev", "LSN", "Decided by", "At", "Seen running", "Forced"], rows
        )
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    actor = assembly.actor()
    done = _store(args).restore(actor=actor, writer=protocol.new_writer(actor), now=protocol.now())
    for what in done:
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
    from pgcohort import api, sidecar

    cfg = _config(args, need=("node.name",))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {cfg['node.name']} %(levelname)s %(message)s")
    car = assembly.sidecar(cfg)
    host, _, port = cfg["sidecar.listen"].rpartition(":")
    try:
        tls = (
            api.tls_context(cfg["sidecar.tls_cert"], cfg["sidecar.tls_key"], cfg["sidecar.tls_client_ca"])
            if cfg["sidecar.tls_cert"]
            else None
        )
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        raise InvalidInputError(
            f"cannot use sidecar.tls_cert/tls_key/tls_client_ca: {e}; nothing was started"
        ) from None
    try:
        server = api.serve(car, host.strip("[]") or "127.0.0.1", int(port), tls=tls)
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot listen on {cfg['sidecar.listen']!r}: {e}") from None
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    leaving = threading.Event()
    sidecar.install_signal_handlers(car, leaving)
    logging.info(
        "sidecar for %s: %s://%s/health, etcd %s",
        car.settings.name,
        "https" if tls else "http",
        cfg["sidecar.listen"],
        ", ".join(cfg["etcd.endpoints"]),
    )
    car.run()
    server.shutdown()
    if leaving.is_set() and cfg["sidecar.leave_on_stop"]:
        logging.info("SIGTERM: %s", sidecar.leave(car.store, car.settings.name, timeout=car.settings.leave_timeout))
    elif leaving.is_set():
        logging.info("SIGTERM: stopped; %s stays in the cohort (`pgcohort leave` removes it)", car.settings.name)
    return 0


def _report_gate(outcome: gate.Outcome, promoted: bool) -> None:
    t = outcome.term
    based_on = outcome.based_on
    if based_on is not None and outcome.reference != based_on.term.primary:
        print(
            f"reasoned from {outcome.reference}, the last primary seen running: term {based_on.term.term} named "
            f"{based_on.term.primary}, which was never seen running as a primary"
        )
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
    if promoted:
        repointed = sorted(set(outcome.survey.positions) - {t.primary} - set(outcome.followers))
        if repointed:
            print(f"following {t.primary} again: {', '.join(repointed)}")
        for name, why in sorted(outcome.followers.items()):
            print(f"  NOT repointed {name}: {why}; set its primary_conninfo to {t.primary} by hand")


def cmd_gate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    candidate = args.candidate or cfg["node.name"]
    if not candidate:
        raise InvalidInputError("gate needs --candidate (or node.name in --config): the node about to be promoted")
    store = assembly.store(cfg)
    started, term, reason = time.monotonic(), None, ""
    result: Result = "refused"
    try:
        try:
            store.read_both()
        except NotInitializedError as e:
            rc = _unmanaged(cfg, store, candidate, e)
            result = "unmanaged"
            return rc
        actor = os.environ.get("PGCOHORT_ACTOR") or f"gate@{candidate}"  # under Patroni: no USER, no arguments
        verdict: gate.Outcome | str
        if args.allow_data_loss:  # by hand: a forced term; the HA manager's hook then sees it names the candidate
            verdict = gate.gate(
                store,
                assembly.connector(cfg),
                actor=actor,
                writer=protocol.new_writer(actor),
                candidate=candidate,
                allow_data_loss=True,
            )
        else:
            verdict = gate.pre_promote(
                store,
                assembly.connector(cfg),
                candidate=candidate,
                actor=actor,
                writer=protocol.new_writer(actor),
                wording=assembly.wording(cfg),
            )
        if isinstance(verdict, str):
            print(verdict)
            result = "own-term"
        else:
            _report_gate(verdict, promoted=False)
            result, term = ("forced" if verdict.term.forced else "allowed"), verdict.term.term
        return 0
    except PgcohortError as e:
        reason = str(e).splitlines()[0][:300]
        raise
    finally:
        _record_decision(
            store, GateDecision(candidate, result, time.monotonic() - started, protocol.now(), term, reason)
        )


def _record_decision(store: EtcdStore, d: GateDecision) -> None:
    """Best effort: the decision is status for people and metrics; failing to record it changes nothing."""
    try:
        store.record_decision(d)
    except PgcohortError as e:
        print(f"pgcohort gate: the decision was not recorded ({e})", file=sys.stderr)


def _unmanaged(cfg: config.Config, store: EtcdStore, candidate: str, missing: NotInitializedError) -> int:
    """The gate for a cluster with no ruleset: never silently unprotected (docs/patroni.md)."""
    managed_by = assembly.patroni_managed_by(cfg, store)
    if managed_by:
        raise RefusedError(
            f"promotion of {candidate} vetoed: Patroni's configuration says pgcohort manages this cluster at "
            f"{managed_by}, but there is no ruleset at {store.root}. The cluster name or etcd.prefix in this "
            "node's pgcohort configuration is wrong (fix it), or the ruleset was deleted (restore it with "
            "`pgcohort init --from-patroni URL`)"
        )
    if cfg["gate.unmanaged"] == "allow":
        print(
            f"pgcohort gate: WARNING: no ruleset at {store.root}; {candidate} is promoted WITHOUT pgcohort's "
            "check (gate.unmanaged: allow). Run `pgcohort init --from-patroni URL` to protect this cluster",
            file=sys.stderr,
        )
        return 0
    raise RefusedError(
        f"promotion of {candidate} vetoed: {missing}. Without a ruleset the gate cannot check that {candidate} "
        "holds every acknowledged write. If pgcohort does not manage this cluster yet, run `pgcohort init "
        "--from-patroni URL` (or set gate.unmanaged: allow to let Patroni promote alone until then); if the "
        "cluster name or etcd.prefix is wrong, fix it in this node's pgcohort configuration"
    )


def cmd_failover(args: argparse.Namespace) -> int:
    if config.adapter(_config(args)) == "patroni":
        raise RefusedError(
            "on Patroni, Patroni promotes: use `patronictl failover` or `patronictl switchover`; pgcohort's gate "
            "runs as Patroni's pre_promote and vetoes an unsafe candidate. Nothing was changed"
        )
    cfg = _config(args)
    outcome = gate.failover(
        assembly.store(cfg),
        assembly.connector(cfg),
        actor=assembly.actor(),
        writer=protocol.new_writer(assembly.actor()),
        candidate=args.candidate,
        allow_data_loss=args.allow_data_loss,
    )
    _report_gate(outcome, promoted=True)
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    from pgcohort import sidecar

    cfg = _config(args, need=("node.name",))
    print(sidecar.leave(assembly.store(cfg), cfg["node.name"], timeout=cfg["sidecar.leave_timeout"]))
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
        "create the ruleset (version 1) and term 1 naming the primary, if none exist; or adopt a Patroni cluster",
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
        "for an HA manager's pre-promote hook (Patroni's pre_promote): exit 0 only if the candidate is the primary "
        "the current term names, or the failover rule allows promoting it and the new term naming it is committed",
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
