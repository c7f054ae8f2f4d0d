"""bench/propagation: from a committed `add` to N watchers observing it, against a bare CAS.

Starts a real 3-member etcd on loopback and N watcher processes (each a RulesetWatch, as
each node's sidecar runs one; each is configured with the endpoints in a different order,
as sidecars on different hosts would be, and streams from whichever member leads, as the
product does). Each round commits an `add` (the ruleset CAS with its history entry) and
times, on the shared monotonic clock, how long each watcher takes to observe that
revision; the member is then finalized, removed and finalized again so the next round can
add it anew. Interleaved with the rounds, a bare etcd3gw CAS transaction (compare
mod_revision, put) on another key, sent to the leader, gives the baseline. Everything is
measured in this one run and printed as ratios: the targets are p50 <= 1.3x for the last
of the N watchers and <= 1.2x for each, p99 <= 2x.

Each watcher stamps what it observed into its own slot of shared memory; this process
sleeps 10 ms after each commit before it looks, so neither a queue nor this process
competes for the two cores with the watchers still receiving a change. Every bare CAS and
every commit follows such a 10 ms pause, so both are measured from the same idle state
(real changes are far apart too).

    python bench/propagation.py [--rounds 500] [--watchers 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import BareCas, ms, pct  # noqa: E402
from pgcohort import protocol  # noqa: E402
from pgcohort.core import ruleset as core  # noqa: E402
from pgcohort.core.rules import AnyK, Member, Rule  # noqa: E402
from pgcohort.store import EtcdStore  # noqa: E402
from tests.servers import EtcdCluster  # noqa: E402

CLUSTER = "bench"
PAUSE = 0.01  # seconds after each commit (and each bare CAS) before the next operation


def watcher(endpoints: list[str], index: int, revs: Any, times: Any, ready: Any) -> None:
    # Spread the watchers over the members, as sidecars on different hosts would be.
    rotated = endpoints[index % len(endpoints) :] + endpoints[: index % len(endpoints)]
    store = EtcdStore(rotated, CLUSTER, timeout=3, retry_for=30)
    first = True
    for view in store.watch():
        times[index] = time.monotonic()  # the observation, then the revision it belongs to
        revs[index] = view.revision
        if first:
            ready.set()
            first = False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--watchers", type=int, default=5)
    args = ap.parse_args()

    etcd = EtcdCluster(3).start()
    procs: list[mp.process.BaseProcess] = []
    try:
        store = EtcdStore(etcd.endpoints, CLUSTER, timeout=3, retry_for=30)
        rule = Rule(AnyK(1), tuple(Member(f"pg{i}") for i in range(3)))
        protocol.init(store, rule, "pg0", actor="bench")
        ctx = mp.get_context("spawn")
        # Each watcher writes (time, revision) of what it observed into its own slot of shared
        # memory: no pickling, queue feeder thread or wake-up of this process per observation
        # competes with the watchers still receiving the change.
        revs = ctx.Array("q", args.watchers, lock=False)
        times = ctx.Array("d", args.watchers, lock=False)
        readies = []
        for i in range(args.watchers):
            ready = ctx.Event()
            p = ctx.Process(target=watcher, args=(etcd.endpoints, i, revs, times, ready), daemon=True)
            p.start()
            procs.append(p)
            readies.append(ready)
        for r in readies:
            assert r.wait(30), "a watcher did not start"

        leader = etcd.leader()
        baseline = BareCas(leader.client_port)
        each: list[float] = []  # commit -> one watcher observed it
        last: list[float] = []  # commit -> the slowest of the N watchers observed it
        commit_only: list[float] = []
        writer = EtcdStore(
            [leader.url] + [m.url for m in etcd.members if m is not leader], CLUSTER, timeout=3, retry_for=30
        )

        def commit(next_of: Any, measure: bool) -> None:
            snap = writer.read()
            proposed = next_of(snap.ruleset)
            t0 = time.monotonic()
            rev = writer.commit(snap.revision, proposed)
            elapsed = time.monotonic() - t0
            deadline = time.monotonic() + 30
            time.sleep(PAUSE)  # past nearly every observation: this process stays off the cores meanwhile
            while any(revs[i] < rev for i in range(args.watchers)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"a watcher did not observe revision {rev} within 30 s")
                time.sleep(0.001)
            seen = {i: times[i] for i in range(args.watchers)}
            if measure:
                commit_only.append(elapsed)
                each.extend(t - t0 for t in seen.values())
                last.append(max(seen.values()) - t0)

        def change(what: core.Change) -> Any:
            return lambda rs: core.propose(rs, what, "pg0", changed_by="b", now="", writer=protocol.new_writer("b"))

        def fin(rs: core.Ruleset) -> core.Ruleset:
            return core.finalize(rs, changed_by="b", now="", writer=protocol.new_writer("b"))

        add, remove = change(core.AddMember(Member("pg3"))), change(core.RemoveMember("pg3"))
        for _ in range(10):  # warm up connections
            baseline.once()
        baseline.samples.clear()
        for _ in range(args.rounds):
            baseline.once()
            time.sleep(PAUSE)  # the measured commit, like every bare CAS, follows a pause
            commit(add, True)
            baseline.once()
            time.sleep(PAUSE)
            commit(fin, False)
            commit(remove, False)
            commit(fin, False)

        bare = baseline.samples
        b50, b99 = pct(bare, 50), pct(bare, 99)
        print(
            f"bench/propagation: 3-member etcd 3.4 on loopback, {args.watchers} watcher processes, {args.rounds} adds"
        )
        print(f"  bare etcd3gw CAS txn (to the leader)   p50 {ms(b50)}  p99 {ms(b99)}   n={len(bare)}")
        print(
            f"  ruleset CAS + history (commit only)    p50 {ms(pct(commit_only, 50))}  p99 {ms(pct(commit_only, 99))}"
        )
        for label, xs, target in (
            ("commit -> each watcher observed", each, 1.2),
            ("commit -> all watchers observed", last, 1.3),
        ):
            r50, r99 = pct(xs, 50) / b50, pct(xs, 99) / b99
            print(
                f"  {label:<38} p50 {ms(pct(xs, 50))}  p99 {ms(pct(xs, 99))}   "
                f"ratio to bare CAS: p50 {r50:.2f}x (target <= {target}x), p99 {r99:.2f}x (target <= 2x)"
            )
        print(f"  (mean bare {ms(statistics.mean(bare))}, mean each {ms(statistics.mean(each))})")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        etcd.close()


if __name__ == "__main__":
    sys.exit(main())
