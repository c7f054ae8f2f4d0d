"""What each ``pgcohort`` command does, as functions of a configuration: the CLI parses and prints around them.

Tests call these directly. Each returns what the command reports (or raises a
:class:`pgcohort.errors.PgcohortError` the CLI turns into its exit code); none prints.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pgcohort import assembly, gate, protocol
from pgcohort.config import Config
from pgcohort.core import ruleset as core
from pgcohort.core.decision import GateDecision, Result
from pgcohort.core.rules import Rule, parse_member, parse_policy
from pgcohort.errors import InvalidInputError, NotInitializedError, PgcohortError, RefusedError
from pgcohort.seams import Revision
from pgcohort.store import EtcdStore

log = logging.getLogger("pgcohort")


def init(cfg: Config, members: Sequence[str], primary: str, policy: str) -> list[str]:
    """Create version 1 of the ruleset and term 1 naming ``primary``; the lines to print."""
    rule = Rule(parse_policy(policy), tuple(parse_member(s) for s in members))
    store = assembly.store(cfg)
    done = protocol.init(store, rule, primary, actor=assembly.actor())
    return [
        f"initialized {store.root}: version 1 at revision {done.snapshot.revision}, term 1 (primary {primary})",
        f"rule: {rule.show()}",
        f"synchronous_standby_names: {rule.render(primary)}",
    ]


def adopt(cfg: Config, manager: str, source: str, policy: str) -> list[str]:
    """``init --from-<manager> SOURCE``: the registered adapter of that HA manager adopts its cluster."""
    return assembly.registered(manager).adopt(source, cfg, assembly.store(cfg), policy=policy, actor=assembly.actor())


def propose(cfg: Config, change: core.Change) -> protocol.Committed:
    return protocol.propose(assembly.store(cfg), change, actor=assembly.actor())


def finalize_by_hand(cfg: Config, revision: int | None) -> protocol.Committed:
    expected = Revision(revision) if revision is not None else None
    return protocol.finalize(assembly.store(cfg), actor=assembly.actor(), expected=expected)


def restore(cfg: Config) -> list[str]:
    actor = assembly.actor()
    return assembly.store(cfg).restore(actor=actor, writer=protocol.new_writer(actor), now=protocol.now())


@dataclass(frozen=True)
class Verdict:
    """What ``pgcohort gate`` decided: the outcome (a new term), or a message (no new term), and a warning.

    ``one_line``: the HA manager reads one line of the hook's stdout (``Hook.one_line``): the CLI prints the
    report on stderr and :meth:`line` on stdout, last.
    """

    outcome: gate.Outcome | None = None
    message: str = ""
    warning: str = ""
    one_line: bool = False

    def line(self) -> str:
        """The decision in one line."""
        if self.outcome is not None:
            t = self.outcome.term
            return f"pgcohort gate: allowed: {t.primary} may be promoted (term {t.term} committed)"
        if self.message:
            return "pgcohort gate: allowed: " + self.message.splitlines()[0]
        return self.warning.splitlines()[0]


def gate_check(cfg: Config, candidate: str | None, *, allow_data_loss: bool = False) -> Verdict:
    """The pre-promote hook: may ``candidate`` (default ``node.name``) be promoted now? Raises when it may not.

    The decision is recorded under ``decisions/<candidate>`` (status for people and metrics, best effort).
    """
    name = candidate or cfg["node.name"]
    if not name:
        raise InvalidInputError("gate needs --candidate (or node.name in --config): the node about to be promoted")
    store = assembly.store(cfg)
    started, term, reason = time.monotonic(), None, ""
    result: Result = "refused"
    try:
        try:
            store.read_both()
        except NotInitializedError as e:
            warning = _unmanaged(cfg, store, name, e)
            result = "unmanaged"
            return Verdict(warning=warning, one_line=assembly.adapter(cfg).hook.one_line)
        actor = os.environ.get("PGCOHORT_ACTOR") or f"gate@{name}"  # under Patroni: no USER, no arguments
        writer, adapter = protocol.new_writer(actor), assembly.adapter(cfg)
        if allow_data_loss:  # by hand: a forced term; the HA manager's hook then sees it names the candidate
            verdict: gate.Outcome | str = gate.gate(
                store, adapter.connector(cfg), actor=actor, writer=writer, candidate=name, allow_data_loss=True,
                wording=adapter.wording,
            )  # fmt: skip
        else:
            connect, hook = adapter.connector(cfg), adapter.hook
            decide = gate.steer if hook.steer else gate.pre_promote  # steer: the HA manager re-elects after a veto
            verdict = decide(store, connect, candidate=name, actor=actor, writer=writer, wording=adapter.wording)
            if hook.hand_over and isinstance(verdict, gate.Outcome):  # the HA manager promotes it as it is
                verdict = gate.hand_over(verdict, connect)
        if isinstance(verdict, str):
            result = "own-term"
            return Verdict(message=verdict, one_line=adapter.hook.one_line)
        result, term = ("forced" if verdict.term.forced else "allowed"), verdict.term.term
        return Verdict(outcome=verdict, one_line=adapter.hook.one_line)
    except PgcohortError as e:
        reason = str(e).splitlines()[0][:300]
        raise
    finally:
        try:
            store.record_decision(GateDecision(name, result, time.monotonic() - started, protocol.now(), term, reason))
        except PgcohortError as e:  # status only: failing to record it changes nothing
            log.warning("pgcohort gate: the decision was not recorded (%s)", e)


def _unmanaged(cfg: Config, store: EtcdStore, candidate: str, missing: NotInitializedError) -> str:
    """The gate for a cluster with no ruleset: never silently unprotected (docs/patroni.md); the warning."""
    chosen = assembly.adapter(cfg)
    managed_by, init = chosen.managed_by(cfg, store), chosen.adoption
    if managed_by:
        raise RefusedError(
            f"promotion of {candidate} vetoed: the HA manager's configuration says pgcohort manages this cluster at "
            f"{managed_by}, but there is no ruleset at {store.root}. The cluster name or etcd.prefix in this "
            "node's pgcohort configuration is wrong (fix it), or the ruleset was deleted (restore it with "
            f"`{init}`)"
        )
    if cfg["gate.unmanaged"] == "allow":
        return (
            f"pgcohort gate: WARNING: no ruleset at {store.root}; {candidate} is promoted WITHOUT pgcohort's "
            f"check (gate.unmanaged: allow). Run `{init}` to protect this cluster"
        )
    raise RefusedError(
        f"promotion of {candidate} vetoed: {missing}. Without a ruleset the gate cannot check that {candidate} "
        f"holds every acknowledged write. If pgcohort does not manage this cluster yet, run `{init}` (or set "
        "gate.unmanaged: allow to let the HA manager promote alone until then); if the cluster name or "
        "etcd.prefix is wrong, fix it in this node's pgcohort configuration"
    )


def failover(cfg: Config, candidate: str | None, *, allow_data_loss: bool = False) -> gate.Outcome:
    """Fence and survey, decide, record the term, promote, repoint (plain PostgreSQL: pgcohort promotes)."""
    adapter = assembly.adapter(cfg)
    elsewhere = adapter.promotes()
    if elsewhere:
        raise RefusedError(elsewhere)
    actor = assembly.actor()
    return gate.failover(
        assembly.store(cfg), adapter.connector(cfg), actor=actor, writer=protocol.new_writer(actor),
        candidate=candidate, allow_data_loss=allow_data_loss,
    )  # fmt: skip


def leave(cfg: Config) -> str:
    from pgcohort.sidecar.leave import leave as leave_cohort

    return leave_cohort(assembly.store(cfg), cfg["node.name"], timeout=cfg["sidecar.leave_timeout"])


def sidecar(cfg: Config) -> str:
    """Run this node's sidecar until SIGTERM or SIGINT; what happened to its member then."""
    from pgcohort import api
    from pgcohort.sidecar.leave import install_signal_handlers
    from pgcohort.sidecar.leave import leave as leave_cohort

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
    install_signal_handlers(car, leaving)
    log.info(
        "sidecar for %s: %s://%s/health, etcd %s",
        car.settings.name, "https" if tls else "http", cfg["sidecar.listen"], ", ".join(cfg["etcd.endpoints"]),
    )  # fmt: skip
    car.run()
    server.shutdown()
    if leaving.is_set() and cfg["sidecar.leave_on_stop"]:
        return "SIGTERM: " + leave_cohort(car.store, car.settings.name, timeout=car.settings.leave_timeout)
    if leaving.is_set():
        return f"SIGTERM: stopped; {car.settings.name} stays in the cohort (`pgcohort leave` removes it)"
    return "stopped"
