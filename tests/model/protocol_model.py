"""An explicit-state model of pgcohort's membership and failover protocol, checked exhaustively.

The model drives the pure core itself, not a copy of it: ruleset transitions
(:func:`pgcohort.core.ruleset.propose` / ``finalize``), the one render
(:func:`pgcohort.core.steps.desired`), the sidecar's next step
(:func:`pgcohort.core.steps.next_step`), the barrier's proof (``barrier_proven``) and the
failover rule (:func:`pgcohort.core.failover.decide`).

The world: a primary ``p`` and standbys ``a``, ``b`` (members) and ``c`` (registered, not a
member), under ``any 1 of (p a b)``. etcd is a linearizable compare-and-swap register with a
revision counter; the ruleset, the term and the term's confirmation live in it. Each node
keeps its WAL as a tuple of entry ids, so "holds a write" is exact and diverged timelines
are visible, and the timeline it is on (a promotion starts a new one, whose history says
where it forked), so positions are compared as PostgreSQL's are
(:func:`pgcohort.core.failover.on_reference`). Two orchestrators read views that may be
stale, propose one change (add c, remove b, or any 2), fence and survey, decide, write a
term with its compares, and promote; either may die between its term and its promotion, so
a term can name a node that never ran. The sidecar beside the primary the term names
confirms the term, applies, commits a barrier, proves it and finalizes; it may restart
mid-change. Writes are acknowledged by whichever standbys the enforced setting requires;
standbys receive or stop; the primary crashes; revoked standbys are repointed to the new
primary (rewound if they diverged). A refused orchestrator lifts its fences, as the gate
does under Patroni, whose leader key lets one gate run at a time.

Invariants, checked in every reachable state:

* **no acknowledged write is missing from a promoted primary** (checked at each promotion);
* **at most one promotion per term, and only after its term committed**;
* **the primary's enforced setting belongs to a committed rule, and its revision never moves back;**
* **no needless block**: when the last primary that ran is dead, its term confirmed, and
  every other member of every active cohort is alive, a fresh survey of them all satisfies
  every active rule (the failover is not held hostage by a node that never ran).

Weakenings (model only, one flag each) show that each rule is load-bearing; each is found
with a shortest counterexample, printed as a numbered trace.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pgcohort.core import failover, steps
from pgcohort.core import ruleset as core
from pgcohort.core.failover import Position
from pgcohort.core.rules import AnyK, Member, Rule
from pgcohort.core.term import Timeline
from pgcohort.core.wal import Switch
from pgcohort.errors import PgcohortError

NODES = ("p", "a", "b", "c")
MEMBER = {n: Member(n, "10.0.0.1", 5432, "z") for n in NODES}
CHANGES: tuple[core.Change, ...] = (
    core.AddMember(MEMBER["c"]),
    core.RemoveMember("b"),
    core.SetPolicy(AnyK(2)),
)
WEAKENINGS = (
    "apply-before-commit",
    "finalize-without-barrier",
    "term-without-revision-compare",
    "short-survey",
    "joint-checks-new-rule-only",
    "reference-unconfirmed-term",  # reason from the current term's primary, confirmed or not (pgcohort 0.4)
    "survey-without-fence",  # read positions without stopping the voters receiving (pgcohort 0.4 on Patroni)
    "lift-while-another-surveys",  # a refused orchestrator lifts its fences although another one is surveying
    "steer-then-allow",  # a hook that steered (promoted the member the rule allows) then allows its own candidate
)


@dataclass(frozen=True)
class Bound:
    writes: int = 2  # client writes (barriers come on top)
    changes: int = 1  # membership or policy changes proposed
    failovers: int = 1  # promotions
    restarts: int = 1  # sidecar restarts
    crashes: int = 1  # primary crashes
    standby_crashes: int = 1  # standbys that die (unreachable from then on)
    reads: int = 2  # views each orchestrator reads
    change: str = "add"  # which change orchestrator 0 may propose: add (c), remove (b), policy (any 2) or none
    abandons: int = 0  # orchestrators that die between their term and their promotion
    steer: bool = False  # the orchestrators are hooks of an HA manager that elects its own candidate (repmgr)


@dataclass(frozen=True)
class Node:
    log: tuple[int, ...] = ()
    primary: bool = False
    alive: bool = True
    streaming: bool = True  # standby: connected to ``upstream`` (a network blip toggles it)
    upstream: str = "p"
    revoked: bool = False  # the gate's survey cleared its primary_conninfo: only a repoint or a lift undoes it
    timeline: int = 1


@dataclass(frozen=True)
class Sidecar:
    verified: str | None = None  # the setting it last verified in force
    barrier_rev: int | None = None  # the revision whose barrier proved itself
    pending: tuple[int, int] | None = None  # (revision, entry id) of a barrier in flight


@dataclass(frozen=True)
class View:
    """What an orchestrator read: the ruleset, the term and its confirmation, with their revisions."""

    rs: core.Ruleset
    rs_rev: int
    term: int
    term_primary: str
    term_rev: int
    reference: str  # the last confirmed term's primary
    timeline: Timeline  # its timeline
    conf_rev: int


@dataclass(frozen=True)
class Orchestrator:
    view: View | None = None
    prepared: core.Ruleset | None = None  # a proposal computed from the view, not yet committed
    survey: tuple[tuple[str, Position], ...] | None = None  # fenced members and what each holds
    elected: tuple[int, str] | None = None  # a committed term (number, candidate) not yet promoted
    vetoed: str | None = None  # steering: the HA manager's candidate the hook refused while it promotes ``elected``
    reads: int = 0  # views read so far (bounded by Bound.reads)


@dataclass(frozen=True)
class State:
    rs: core.Ruleset
    rs_rev: int
    term: int
    term_primary: str
    term_rev: int
    rev: int  # etcd's revision counter
    committed: frozenset[int]  # every revision at which a ruleset was committed
    nodes: tuple[tuple[str, Node], ...]
    enforced: tuple[tuple[str, steps.Desired | None], ...]  # each primary's synchronous_standby_names
    applied_rev: tuple[tuple[str, int], ...]  # the highest revision each node ever enforced
    sidecars: tuple[tuple[str, Sidecar], ...]
    orchs: tuple[Orchestrator, Orchestrator]
    pending: frozenset[int]  # client writes appended, not yet acknowledged
    acked: frozenset[int]
    promotions: tuple[tuple[int, str], ...]
    conf_term: int = 1  # the last confirmed term, its primary and timeline (init confirms term 1)
    conf_primary: str = "p"
    conf_timeline: Timeline = Timeline(1)
    conf_rev: int = 1
    timelines: tuple[Timeline, ...] = (Timeline(1),)  # every timeline a promotion started
    next_id: int = 1
    writes: int = 0
    changes: int = 0
    failovers: int = 0
    restarts: int = 0
    crashes: int = 0
    standby_crashes: int = 0
    abandons: int = 0

    def node(self, n: str) -> Node:
        return dict(self.nodes)[n]

    def view(self) -> View:
        return View(self.rs, self.rs_rev, self.term, self.term_primary, self.term_rev, self.conf_primary,
                    self.conf_timeline, self.conf_rev)  # fmt: skip


V = TypeVar("V")


def _set(pairs: tuple[tuple[str, V], ...], key: str, value: V) -> tuple[tuple[str, V], ...]:
    return tuple((k, value if k == key else v) for k, v in pairs)


def initial(bound: Bound | None = None) -> State:
    rule = Rule(AnyK(1), (MEMBER["p"], MEMBER["a"], MEMBER["b"]))
    rs = core.initial(rule, "p", changed_by="model", now="")
    c_exists = bound is None or bound.change == "add"  # c matters only to an add: otherwise it is not there
    nodes = tuple((n, Node(primary=(n == "p"), streaming=(n != "p"), alive=(n != "c" or c_exists))) for n in NODES)
    target = steps.desired(rs, 1, "p", "p")
    return State(
        rs, 1, 1, "p", 1, 1, frozenset({1}), nodes,
        tuple((n, target if n == "p" else None) for n in NODES),
        tuple((n, 1 if n == "p" else 0) for n in NODES),
        tuple((n, Sidecar(verified=target.setting, barrier_rev=None)) for n in NODES),
        (Orchestrator(), Orchestrator()),
        frozenset(), frozenset(), (),
    )  # fmt: skip


class Violation(Exception):
    pass


@dataclass
class Checker:
    bound: Bound = field(default_factory=Bound)
    weak: frozenset[str] = frozenset()

    # --- helpers ---------------------------------------------------------------------

    def holders(self, s: State, entry: int) -> frozenset[str]:
        return frozenset(n for n, node in s.nodes if not node.primary and entry in node.log)

    def acknowledged(self, s: State, primary: str, entry: int) -> bool:
        target = dict(s.enforced)[primary]
        return target is not None and len(self.holders(s, entry) & target.standbys) >= target.acks

    def reference(self, view: View) -> str:
        """The failed primary a gate reasons from: the last confirmed term's (or, weakened, the current term's)."""
        return view.term_primary if "reference-unconfirmed-term" in self.weak else view.reference

    def comparable(self, view: View, found: dict[str, Position]) -> dict[str, int] | None:
        """Positions comparable on the reference's timeline; None when one is on a timeline it does not contain."""
        if "reference-unconfirmed-term" in self.weak:
            return {n: p.lsn for n, p in found.items()}  # 0.4 compared raw positions, knowing no timelines
        comparable, foreign = failover.on_reference(found, view.timeline)
        return None if foreign else comparable

    def decide(self, view: View, found: dict[str, Position]) -> failover.FailoverDecision | None:
        rs, old = view.rs, self.reference(view)
        positions = self.comparable(view, found)
        if positions is None:
            return None
        if "joint-checks-new-rule-only" in self.weak and rs.previous is not None:
            rs = replace(rs, previous=None)
        if "short-survey" in self.weak:
            original = failover.survey_size
            setattr(failover, "survey_size", lambda e, k: e - k)  # noqa: B010 (the weakening itself)
            try:
                return failover.decide(rs, old, positions)
            finally:
                setattr(failover, "survey_size", original)  # noqa: B010
        return failover.decide(rs, old, positions)

    # --- actions -----------------------------------------------------------------------

    def successors(self, s: State) -> Iterator[tuple[str, State]]:
        yield from self.client(s)
        yield from self.replication(s)
        yield from self.sidecar(s)
        yield from self.orchestrators(s)
        yield from self.faults(s)

    def client(self, s: State) -> Iterator[tuple[str, State]]:
        for n, node in s.nodes:
            if node.primary and node.alive and dict(s.enforced)[n] is not None:
                if s.writes < self.bound.writes:
                    e = s.next_id
                    nodes = _set(s.nodes, n, replace(node, log=node.log + (e,)))
                    yield (
                        f"client writes w{e} on {n}",
                        replace(s, nodes=nodes, pending=s.pending | {e}, next_id=e + 1, writes=s.writes + 1),
                    )
                for e in sorted(s.pending):
                    if e in node.log and self.acknowledged(s, n, e):
                        got = sorted(self.holders(s, e))
                        yield (
                            f"{n} acknowledges w{e} (held by {', '.join(got)})",
                            replace(s, pending=s.pending - {e}, acked=s.acked | {e}),
                        )

    def replication(self, s: State) -> Iterator[tuple[str, State]]:
        nodes = dict(s.nodes)
        for n, node in s.nodes:
            if node.primary or not node.alive:
                continue
            up = nodes[node.upstream]
            if node.revoked:
                lead = s.term_primary
                if lead != node.upstream and lead != n and nodes[lead].primary and nodes[lead].alive:
                    common = 0
                    lead_log = nodes[lead].log
                    while common < min(len(node.log), len(lead_log)) and node.log[common] == lead_log[common]:
                        common += 1
                    rewound = " (rewound)" if common < len(node.log) else ""
                    new = Node(node.log[:common], upstream=lead, timeline=nodes[lead].timeline)
                    yield f"{n} is repointed to {lead}{rewound}", replace(s, nodes=_set(s.nodes, n, new))
            elif node.streaming:
                if up.alive and up.log[: len(node.log)] == node.log and len(up.log) > len(node.log):
                    # Everything the upstream has, at once: WAL arrives in order, and a standby
                    # that stops midway is the same as one that stopped before the last entries.
                    new = replace(node, log=up.log, timeline=up.timeline)
                    got = ", ".join(str(e) for e in up.log[len(node.log) :])
                    yield f"{n} receives entries {got} from {node.upstream}", replace(s, nodes=_set(s.nodes, n, new))
                yield f"{n} stops receiving", replace(s, nodes=_set(s.nodes, n, replace(node, streaming=False)))
            elif up.alive:
                yield (
                    f"{n} reconnects to {node.upstream}",
                    replace(s, nodes=_set(s.nodes, n, replace(node, streaming=True))),
                )

    def sidecar(self, s: State) -> Iterator[tuple[str, State]]:
        for n, node in s.nodes:
            if not (node.primary and node.alive):
                continue
            car = dict(s.sidecars)[n]
            enforced = dict(s.enforced)[n]
            local = steps.Local(n, True, enforced.setting if enforced else "", car.verified, car.barrier_rev)
            step = steps.next_step(s.rs, s.rs_rev, s.term_primary, local, term=s.term, confirm=s.conf_term != s.term)
            match step:
                case steps.Confirm(term):
                    rev = s.rev + 1
                    tl = next(t for t in s.timelines if t.id == node.timeline)
                    yield (
                        f"{n}'s sidecar confirms term {term} (timeline {tl.id})",
                        replace(s, conf_term=term, conf_primary=n, conf_timeline=tl, conf_rev=rev, rev=rev),
                    )
                case steps.Apply(target):
                    yield from self.apply(
                        s, n, target, f"{n}'s sidecar applies revision {target.revision}: {target.setting}"
                    )
                case steps.Barrier(target):
                    if "finalize-without-barrier" in self.weak:
                        done = replace(car, barrier_rev=target.revision)
                        yield f"{n}'s sidecar skips the barrier", replace(s, sidecars=_set(s.sidecars, n, done))
                    elif car.pending is None or car.pending[0] != target.revision:
                        e = s.next_id
                        nodes = _set(s.nodes, n, replace(node, log=node.log + (e,)))
                        busy = replace(car, pending=(target.revision, e))
                        yield (
                            f"{n}'s sidecar commits barrier b{e} for revision {target.revision}",
                            replace(s, nodes=nodes, sidecars=_set(s.sidecars, n, busy), next_id=e + 1),
                        )
                    elif steps.barrier_proven(target, self.holders(s, car.pending[1])):
                        done = replace(car, barrier_rev=target.revision, pending=None)
                        yield (
                            f"{n}'s barrier b{car.pending[1]} proves itself",
                            replace(s, sidecars=_set(s.sidecars, n, done)),
                        )
                case steps.Finalize(revision):
                    final = core.finalize(s.rs, changed_by=n, now="")
                    rev = s.rev + 1
                    yield (
                        f"{n}'s sidecar finalizes revision {revision} -> {rev}: {final.show()}",
                        replace(s, rs=final, rs_rev=rev, rev=rev, committed=s.committed | {rev}),
                    )
                case _:
                    pass
            # The weakened sidecar also applies an orchestrator's proposal before it commits.
            if "apply-before-commit" in self.weak:
                for i, o in enumerate(s.orchs):
                    if o.prepared is not None and s.term_primary == n:
                        target = steps.desired(o.prepared, s.rev + 1, n, n)
                        yield from self.apply(
                            s, n, target, f"{n}'s sidecar applies orchestrator {i}'s uncommitted proposal"
                        )

    def apply(self, s: State, n: str, target: steps.Desired, label: str) -> Iterator[tuple[str, State]]:
        car = dict(s.sidecars)[n]
        new_car = replace(car, verified=target.setting, pending=None)
        applied = max(dict(s.applied_rev)[n], target.revision)
        yield (
            label,
            replace(
                s,
                enforced=_set(s.enforced, n, target),
                sidecars=_set(s.sidecars, n, new_car),
                applied_rev=_set(s.applied_rev, n, applied),
            ),
        )

    def orchestrators(self, s: State) -> Iterator[tuple[str, State]]:
        for i, o in enumerate(s.orchs):
            view = s.view()
            if o.view != view and o.elected is None and o.reads < self.bound.reads:
                yield (
                    f"orchestrator {i} reads revision {s.rs_rev}, term {s.term} (last confirmed: {s.conf_primary})",
                    self._orch(s, i, Orchestrator(view=view, reads=o.reads + 1)),
                )
            if o.view is None:
                continue
            v = o.view
            # propose one change from the view
            if s.changes < self.bound.changes and o.prepared is None and o.survey is None:
                for change in (CHANGES[("add", "remove", "policy").index(self.bound.change)],):
                    try:
                        proposal = core.propose(v.rs, change, v.term_primary, changed_by=f"o{i}", now="")
                    except PgcohortError:
                        continue
                    yield (
                        f"orchestrator {i} prepares {change}",
                        replace(self._orch(s, i, replace(o, prepared=proposal)), changes=s.changes + 1),
                    )
            if o.prepared is not None:
                ok = s.rs_rev == v.rs_rev and s.term_rev == v.term_rev
                if ok:
                    rev = s.rev + 1
                    yield (
                        f"orchestrator {i} commits {o.prepared.show()} at revision {rev}",
                        replace(
                            self._orch(s, i, Orchestrator(reads=o.reads)),
                            rs=o.prepared,
                            rs_rev=rev,
                            rev=rev,
                            committed=s.committed | {rev},
                        ),
                    )
                else:
                    yield f"orchestrator {i}'s commit conflicts", self._orch(s, i, Orchestrator(reads=o.reads))
            # fail over: fence and survey, decide, term, promote
            if s.failovers < self.bound.failovers and o.prepared is None:
                if o.survey is None and o.elected is None:
                    yield from self.survey(s, i, o)
                elif o.survey is not None and o.elected is None:
                    decision = self.decide(v, dict(o.survey))
                    if decision is not None and decision.allowed and decision.candidate is not None:
                        compare = (
                            s.term_rev == v.term_rev
                            and s.conf_rev == v.conf_rev
                            and ("term-without-revision-compare" in self.weak or s.rs_rev == v.rs_rev)
                        )
                        if compare:
                            rev = s.rev + 1
                            yield f"orchestrator {i} commits term {v.term + 1} naming {decision.candidate}", replace(
                                self._orch(s, i, replace(o, elected=(v.term + 1, decision.candidate))),
                                term=v.term + 1, term_primary=decision.candidate, term_rev=rev, rev=rev,
                            )  # fmt: skip
                            for other in self.steered(s, o, decision.candidate):
                                yield (
                                    f"orchestrator {i}'s HA manager elects {other}: the hook refuses it and steers, "
                                    f"committing term {v.term + 1} naming {decision.candidate}",
                                    replace(
                                        self._orch(s, i, replace(o, elected=(v.term + 1, decision.candidate),
                                                                 vetoed=other)),
                                        term=v.term + 1, term_primary=decision.candidate, term_rev=rev, rev=rev,
                                    ),
                                )  # fmt: skip
                        else:
                            yield (
                                f"orchestrator {i}'s term write conflicts",
                                self._orch(s, i, Orchestrator(reads=o.reads)),
                            )
                    else:
                        yield from self.lift(s, i, o)
                elif o.elected is not None:
                    yield from self.promote(s, i, o.elected)
                    if s.abandons < self.bound.abandons:
                        yield (
                            f"orchestrator {i} dies before promoting {o.elected[1]} (term {o.elected[0]})",
                            replace(self._orch(s, i, Orchestrator(reads=o.reads)), abandons=s.abandons + 1),
                        )

    def steered(self, s: State, o: Orchestrator, allowed: str) -> Iterator[str]:
        """The candidates an HA manager that elects its own (``Bound.steer``) may put to the hook besides
        ``allowed``: any surveyed member. The hook refuses each and promotes ``allowed`` itself (steering)."""
        if not self.bound.steer or o.survey is None:
            return
        yield from (m for m, _ in o.survey if m != allowed)

    def lift(self, s: State, i: int, o: Orchestrator) -> Iterator[tuple[str, State]]:
        """A refused orchestrator lifts its fences: only while no other one is surveying (Patroni's leader key)."""
        other = s.orchs[1 - i]
        if (other.survey is not None or other.elected is not None) and "lift-while-another-surveys" not in self.weak:
            return
        assert o.survey is not None
        nodes = dict(s.nodes)
        for m, _ in o.survey:
            if nodes[m].revoked:
                nodes[m] = replace(nodes[m], revoked=False)
        yield (
            f"orchestrator {i} is refused and lifts its fences",
            replace(self._orch(s, i, Orchestrator(reads=o.reads)), nodes=tuple((n, nodes[n]) for n in NODES)),
        )

    def survey(self, s: State, i: int, o: Orchestrator) -> Iterator[tuple[str, State]]:
        assert o.view is not None
        rs, old = o.view.rs, self.reference(o.view)
        members = sorted({m.name for r in rs.active_rules() for m in r.cohort} - {old})
        nodes, positions = dict(s.nodes), []
        for m in members:
            node = nodes[m]
            if not node.alive:
                continue
            if node.primary:
                return  # a second primary: the gate refuses
            if "survey-without-fence" not in self.weak:
                nodes[m] = replace(node, streaming=False, revoked=True)
            positions.append((m, Position(len(node.log), node.timeline)))
        shown = ", ".join(f"{m}@{p.lsn}" for m, p in positions) or "nobody"
        fenced = "reads" if "survey-without-fence" in self.weak else "fences and surveys"
        yield (
            f"orchestrator {i} {fenced} {shown}",
            replace(
                self._orch(s, i, replace(o, survey=tuple(positions))),
                nodes=tuple((n, nodes[n]) for n in NODES),
            ),
        )

    def promote(self, s: State, i: int, elected: tuple[int, str]) -> Iterator[tuple[str, State]]:
        term, name = elected
        node = s.node(name)
        if not node.alive:
            return
        if any(t == term for t, _ in s.promotions):
            raise Violation(f"term {term} promoted twice ({name} after {dict(s.promotions)[term]})")
        missing = sorted(s.acked - set(node.log))
        if missing:
            raise Violation(
                f"promoting {name} (term {term}) loses acknowledged write(s) {', '.join(f'w{e}' for e in missing)}"
            )
        parent = next(t for t in s.timelines if t.id == node.timeline)
        timeline = Timeline(len(s.timelines) + 1, parent.history + (Switch(parent.id, len(node.log)),))
        nodes = _set(s.nodes, name, replace(node, primary=True, streaming=False, timeline=timeline.id))
        vetoed = s.orchs[i].vetoed
        after = replace(
            self._orch(s, i, Orchestrator(reads=s.orchs[i].reads)),
            nodes=nodes,
            promotions=s.promotions + ((term, name),),
            failovers=s.failovers + 1,
            pending=frozenset(),  # the old primary's unacknowledged commits never return
            timelines=s.timelines + (timeline,),
        )
        if vetoed is not None and "steer-then-allow" in self.weak:
            # The weakened hook exits 0 after steering: the HA manager promotes its own candidate as well.
            yield (
                f"orchestrator {i} promotes {name} (term {term}), then allows {vetoed}: its HA manager promotes it",
                replace(after, promotions=after.promotions + ((term, vetoed),)),
            )
            return
        steered = f", the veto of {vetoed} standing" if vetoed is not None else ""
        yield f"orchestrator {i} promotes {name} (term {term}, timeline {timeline.id}){steered}", after

    def faults(self, s: State) -> Iterator[tuple[str, State]]:
        for n, node in s.nodes:
            if node.primary and node.alive and s.crashes < self.bound.crashes:
                yield (
                    f"{n} crashes",
                    replace(s, nodes=_set(s.nodes, n, replace(node, alive=False)), crashes=s.crashes + 1),
                )
            if not node.primary and node.alive and s.standby_crashes < self.bound.standby_crashes:
                yield (
                    f"standby {n} dies",
                    replace(
                        s, nodes=_set(s.nodes, n, replace(node, alive=False)), standby_crashes=s.standby_crashes + 1
                    ),
                )
            if node.primary and node.alive and s.restarts < self.bound.restarts:
                yield (
                    f"{n}'s sidecar restarts",
                    replace(s, sidecars=_set(s.sidecars, n, Sidecar()), restarts=s.restarts + 1),
                )

    def _orch(self, s: State, i: int, o: Orchestrator) -> State:
        orchs = (o, s.orchs[1]) if i == 0 else (s.orchs[0], o)
        return replace(s, orchs=orchs)

    # --- invariants ----------------------------------------------------------------------

    def check(self, before: State, after: State) -> None:
        for n, target in after.enforced:
            if target is not None and target != dict(before.enforced)[n]:
                if target.revision not in after.committed:
                    raise Violation(
                        f"{n} enforces a setting from revision {target.revision}, which was never committed"
                    )
                if target.revision < dict(before.applied_rev)[n]:
                    raise Violation(f"{n}'s setting moved back to revision {target.revision}")
        terms = [t for t, _ in after.promotions]
        if len(terms) != len(set(terms)):
            raise Violation("two promotions in one term")
        self.not_blocked(after)

    def not_blocked(self, s: State) -> None:
        """When the last primary that ran is dead and confirmed, and every other member of every active cohort is
        alive and in recovery, a fresh survey of them all satisfies every active rule."""
        last = s.promotions[-1][1] if s.promotions else "p"
        if s.node(last).alive or s.conf_primary != last:
            return
        members = {m.name for r in s.rs.active_rules() for m in r.cohort} - {last}
        if not all(s.node(m).alive and not s.node(m).primary for m in members):
            return
        view = s.view()
        found = {m: Position(len(s.node(m).log), s.node(m).timeline) for m in members}
        positions = self.comparable(view, found)
        checks = failover.check_rules(s.rs, self.reference(view), positions or {})
        short = [str(c) for c in checks if not c.ok]
        if positions is None or short:
            raise Violation(
                f"blocked: {last}, the last primary that ran, is dead and every other member is alive, yet "
                f"{'; '.join(short) or 'their timelines are refused'} (term {s.term} names {s.term_primary})"
            )

    # --- the search ------------------------------------------------------------------------

    def explore(self, limit: int | None = None) -> Result:
        start = time.monotonic()
        first = initial(self.bound)
        parent: dict[State, tuple[State, str] | None] = {first: None}
        queue = collections.deque([first])
        depth = {first: 0}
        while queue:
            s = queue.popleft()
            label = ""
            try:
                for label, nxt in self.successors(s):
                    self.check(s, nxt)
                    if nxt not in parent:
                        parent[nxt] = (s, label)
                        depth[nxt] = depth[s] + 1
                        queue.append(nxt)
            except Violation as v:
                steps_ = trace(parent, s, v)
                if not str(v).startswith(("promoting", "term")):  # found in the state after this step
                    steps_.insert(-1, label)
                return Result(len(parent), max(depth.values()), time.monotonic() - start, str(v), steps_)
            if limit is not None and len(parent) > limit:
                break
        return Result(len(parent), max(depth.values()), time.monotonic() - start, None, [])


def trace(parent: dict[State, tuple[State, str] | None], last: State, v: Violation) -> list[str]:
    steps_: list[str] = []
    cur: State | None = last
    while cur is not None and parent[cur] is not None:
        link = parent[cur]
        assert link is not None
        prev, label = link
        steps_.append(label)
        cur = prev
    return list(reversed(steps_)) + [f"VIOLATION: {v}"]


@dataclass(frozen=True)
class Result:
    states: int
    depth: int
    seconds: float
    violation: str | None
    trace: list[str]

    def show(self) -> str:
        if self.violation is None:
            return f"no violation: {self.states} distinct states explored to depth {self.depth} in {self.seconds:.1f} s"
        steps_ = "\n".join(f"  {i + 1:>2}. {line}" for i, line in enumerate(self.trace))
        return f"counterexample after {self.states} states ({len(self.trace) - 1} steps):\n{steps_}"
