"""Seeded fault schedules: a pure function from a seed to a timed list of fault events.

The same seed gives the same schedule on every setup. Events name their targets by *role*
(``primary``, ``replica:1``, ``etcd:2``), never by node: the runner resolves a role when the
event fires (the primary is whoever holds Patroni's leader key then; ``replica:i`` is the
i-th of the other nodes sorted by name, modulo their number), so "kill the primary" hits the
primary in every setup even after the setups' histories have diverged.

The fault vocabulary (:data:`KINDS`); ``hold`` is how long a fault lasts before it is undone
(None: until the heal at the end of the schedule):

================== ===============================================================================
kind               what the runner does
================== ===============================================================================
kill               kill -9 of the primary's Patroni agent (``what=agent``), its PostgreSQL
                   (``postgres``; Patroni restarts it) or both; the agent is started again after
                   ``hold`` (the old primary returning)
pause-agent        SIGSTOP of a node's Patroni agent (its PostgreSQL keeps running), SIGCONT after ``hold``
pause-walreceiver  SIGSTOP of a replica's WAL receiver, SIGCONT after ``hold``
isolate            a node cut from every other node and from etcd (clients still reach it)
cut-primary        the primary cut from only some replicas (``peers``), and from etcd if ``etcd``
split-zones        zone-a cut from zone-b; the zone without etcd (``what``) is cut from etcd too
etcd-kill          kill -9 of an etcd member, restarted after ``hold``
etcd-leader        kill -9 of etcd's leader, restarted after ``hold``
etcd-quorum        SIGSTOP of every etcd member but one (quorum lost), SIGCONT after ``hold``
sidecar-kill       kill -9 of a node's pgcohort sidecar, started again after ``hold`` (no-op without pgcohort)
member-add         the cohort gains the lowest-named node outside it (if any)
member-remove      the cohort loses its ``pick``-th member other than the primary
policy             the durability rule asks 2 acknowledgements for ``hold``, then its own again
================== ===============================================================================

Membership and policy changes mean, per setup: ``pgcohort add/remove/policy`` with pgcohort;
an edit of the passed-through ``synchronous_standby_names`` (``patronictl edit-config``) with
Patroni alone; the ``nosync`` tag and ``synchronous_node_count`` with Patroni's quorum mode.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

VERSION = 1  # bump when the same seed starts giving a different schedule

KINDS = (
    "kill",
    "pause-agent",
    "pause-walreceiver",
    "isolate",
    "cut-primary",
    "split-zones",
    "etcd-kill",
    "etcd-leader",
    "etcd-quorum",
    "sidecar-kill",
    "member-add",
    "member-remove",
    "policy",
)
WEIGHTS = (4, 4, 3, 2, 3, 1, 1, 1, 1, 1, 1, 1, 1)
PRIMARY_FAULTS = ("kill", "pause-agent", "isolate", "cut-primary")  # every schedule has one of these
REPLICAS = 3  # replica:i picks among this many (a 4-node cluster); the runner takes i modulo the real number
ETCD_MEMBERS = 3


@dataclass(frozen=True)
class Event:
    """One fault: what, against which role, from ``at`` seconds after the start, for ``hold`` seconds."""

    at: float
    kind: str
    target: str = ""  # a role: "primary", "replica:I", "etcd:I"; "" where the kind names none
    hold: float | None = None  # seconds until undone; None: until the heal
    what: str = ""  # kill: agent|postgres|both; split-zones: the zone etcd stays with (a|b)
    peers: tuple[int, ...] = ()  # cut-primary: which replicas (replica:I) are cut from the primary
    etcd: bool = False  # cut-primary: the primary is cut from etcd too
    pick: int = 0  # member-remove: which member other than the primary (modulo their number)

    def describe(self) -> str:
        """One line a person reads: ``t+ 7.3s  kill primary (agent+postgres), back after 12.0s``."""
        if self.kind == "kill":
            what = {"agent": "Patroni agent", "postgres": "PostgreSQL", "both": "agent+postgres"}[self.what]
            back = "Patroni restarts it" if self.what == "postgres" else _back(self.hold, "back")
            text = f"kill -9 {self.target} ({what}), {back}"
        elif self.kind == "cut-primary":
            cut = ", ".join(f"replica:{p}" for p in self.peers) + (", etcd" if self.etcd else "")
            text = f"cut primary from {cut}, {_back(self.hold, 'healed')}"
        elif self.kind == "split-zones":
            text = f"split zone-a | zone-b, etcd with zone-{self.what}, {_back(self.hold, 'healed')}"
        elif self.kind == "member-add":
            text = "add the first non-member to the cohort"
        elif self.kind == "member-remove":
            text = f"remove member #{self.pick} (not the primary) from the cohort"
        elif self.kind == "policy":
            text = f"policy: 2 acknowledgements, {_back(self.hold, 'back')}"
        elif self.kind in ("etcd-leader", "etcd-quorum"):
            text = f"{self.kind}{' keeping ' + self.target if self.target else ''}, {_back(self.hold, 'back')}"
        else:
            text = f"{self.kind} {self.target}, {_back(self.hold, 'undone')}"
        return f"t+{self.at:5.1f}s  {text}"


def _back(hold: float | None, verb: str) -> str:
    return f"{verb} after {hold:.1f}s" if hold is not None else f"{verb} at the heal"


@dataclass(frozen=True)
class Schedule:
    """A seed's events, sorted by time, within ``length`` seconds; everything is healed at ``length``."""

    seed: int
    length: float
    events: tuple[Event, ...]
    version: int = VERSION

    def describe(self) -> str:
        head = f"schedule seed {self.seed} (generator v{self.version}): {len(self.events)} events in {self.length:.0f}s"
        return "\n".join([head, *("  " + e.describe() for e in self.events), f"  t+{self.length:5.1f}s  heal"])


def generate(seed: int, length: float = 45.0, *, events: tuple[int, int] = (3, 6)) -> Schedule:
    """The schedule of ``seed``: between ``events[0]`` and ``events[1]`` faults, at least one against the primary.

    Pure and deterministic: the same arguments always give the same schedule. Faults start
    between 2 s and ``length - 6`` s; the one against the primary starts by ``length - 25`` s,
    so that a fault longer than Patroni's ttl (20 s) can end in a failover before the heal.
    A fault lasts 2-10 s (a blip) or 18-35 s (past the ttl) with even odds, and a quarter of
    the faults against a node last until the heal (the old primary returns only then).
    """
    if length < 30:
        raise ValueError(f"a schedule needs at least 30 s, not {length}")
    rnd = random.Random(seed)
    count = rnd.randint(*events)
    first = _event(rnd, rnd.choice(PRIMARY_FAULTS), length, latest=length - 25.0)
    drawn = [first, *(_event(rnd, kind, length) for kind in rnd.choices(KINDS, weights=WEIGHTS, k=count - 1))]
    return Schedule(seed, length, tuple(sorted(drawn, key=lambda e: (e.at, e.kind))))


def _event(rnd: random.Random, kind: str, length: float, latest: float | None = None) -> Event:
    at = round(rnd.uniform(2.0, latest if latest is not None else length - 6.0), 1)
    hold: float | None = round(rnd.uniform(2.0, 10.0) if rnd.random() < 0.5 else rnd.uniform(18.0, 35.0), 1)
    if kind in ("kill", "pause-agent", "isolate", "cut-primary") and rnd.random() < 0.25:
        hold = None  # until the heal: the old primary returns only at the end
    node = "primary" if rnd.random() < 0.5 else f"replica:{rnd.randrange(REPLICAS)}"
    if kind == "kill":
        return Event(at, kind, "primary", hold, what=rnd.choice(("agent", "postgres", "both", "both")))
    if kind in ("pause-agent", "isolate", "sidecar-kill"):
        return Event(at, kind, node if latest is None else "primary", hold)
    if kind == "pause-walreceiver":
        return Event(at, kind, f"replica:{rnd.randrange(REPLICAS)}", hold)
    if kind == "cut-primary":
        peers = tuple(sorted(rnd.sample(range(REPLICAS), rnd.randint(1, REPLICAS - 1))))
        return Event(at, kind, "primary", hold, peers=peers, etcd=rnd.random() < 0.5)
    if kind == "split-zones":
        return Event(at, kind, "", hold, what=rnd.choice(("a", "b")))
    if kind == "etcd-kill":
        return Event(at, kind, f"etcd:{rnd.randrange(ETCD_MEMBERS)}", hold)
    if kind == "etcd-leader":
        return Event(at, kind, "", hold)
    if kind == "etcd-quorum":  # short: long enough for Patroni's retry_timeout to notice, sometimes
        return Event(at, kind, f"etcd:{rnd.randrange(ETCD_MEMBERS)}", round(rnd.uniform(1.0, 8.0), 1))
    if kind == "member-add":
        return Event(at, kind)
    if kind == "member-remove":
        return Event(at, kind, pick=rnd.randrange(REPLICAS))
    if kind == "policy":
        return Event(at, kind, "", hold)
    raise ValueError(f"unknown fault kind {kind!r}")
