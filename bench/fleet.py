"""bench/fleet: one real 3-member etcd serving a fleet of pgcohort clusters (Patroni's one scope per cluster).

For each fleet size (default 100, 1,000 and 10,000 clusters) a fresh 3-member etcd is started and
measured empty; then every cluster gets its ruleset and term (``pgcohort init``), and ``--hosts``
watcher processes (default 3) each follow every cluster: a process stands for a host that runs a
sidecar of each cluster, so every cluster has three watchers, one per host. Each watcher is the
product's watch of a store made with ``EtcdStore.for_cluster`` iterated in its own thread, so a
process holds one shared prefix watch (``pgcohort.store.hub``) and dispatches per cluster, as the
product does for a process that serves several clusters. ``--mode private`` gives every watcher a
stream of its own instead (a ``RulesetWatch``, as one sidecar per process has).

A generator commits membership changes at a steady rate across the fleet (add a member, finalize,
remove it, finalize: the real ruleset CAS with its history entry, on a random cluster each time);
every watcher reports each revision it observes on the shared monotonic clock. Each change must be
seen by every watcher of its cluster, in order, once.

Printed per size: propagation from the commit to *all three* watchers of that cluster (p50, p99,
and the ratio to a bare etcd CAS measured in the same run); how many changes every watcher saw;
etcd's and the watchers' CPU and memory per cluster (with no changes, for ``--idle`` seconds,
over the same etcd measured empty and over the watcher processes before they subscribed) and per
change (what the changes add over the still fleet, per change per second); TCP connections to
etcd and the watch streams etcd counts. Then each per-cluster and per-change cost at the largest
size against the second largest (flat means <= 1.5x).

etcd runs with ``--experimental-watch-progress-notify-interval 5s`` (the fleet setting of
docker-compose.yml) unless ``--etcd-progress-notify`` says otherwise; no other default is changed
(see docs/PERFORMANCE.md).

    python bench/fleet.py [--sizes 100,1000,10000] [--rate 20] [--seconds 60] [--idle 30] [--hosts 3]
                          [--mode shared|private]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import resource
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import BareCas, ms, pct  # noqa: E402
from pgcohort import protocol  # noqa: E402
from pgcohort.core import ruleset as core  # noqa: E402
from pgcohort.core.rules import AnyK, Member, Rule  # noqa: E402
from pgcohort.store import EtcdStore  # noqa: E402
from pgcohort.store.watch import RulesetWatch  # noqa: E402
from tests.servers import EtcdCluster  # noqa: E402

PREFIX = "/fleet"
RULE = Rule(AnyK(1), tuple(Member(f"pg{i}", "127.0.0.1", 5432 + i) for i in range(3)))
SPARE = Member("pg3", "127.0.0.1", 5435)
THREAD_STACK = (
    256 * 1024
)  # a watcher thread needs little stack; 10,000 of them at 8 MiB each is 80 GiB of address space


def cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), rss


Snapshot = dict[int, tuple[float, int]]  # pid -> cpu_rss(pid)


def usage(first: Snapshot, last: Snapshot, pids: list[int], seconds: float) -> tuple[float, float]:
    """(CPU in % of a core, RSS in MB at ``last``) of ``pids`` together between two snapshots."""
    return sum(last[p][0] - first[p][0] for p in pids) / seconds * 100, sum(last[p][1] for p in pids) / 2**20


def standing(groups: list[list[int]], seconds: float) -> list[tuple[float, float]]:
    """:func:`usage` of each group of pids over the same ``seconds`` of waiting."""
    pids = [p for group in groups for p in group]
    first = {p: cpu_rss(p) for p in pids}
    time.sleep(seconds)
    last = {p: cpu_rss(p) for p in pids}
    return [usage(first, last, g, seconds) for g in groups]


def connections(ports: set[int]) -> int:
    """Established TCP connections whose server side is one of ``ports`` (etcd's client ports)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) in ports:
                n += 1
    return n


def etcd_watches(etcd: EtcdCluster) -> tuple[int, int]:
    """(watchers, watch streams) etcd's members count (their /metrics)."""
    watchers = streams = 0
    for m in etcd.members:
        with urllib.request.urlopen(m.url + "/metrics", timeout=5) as r:  # noqa: S310 (loopback)
            for line in r.read().decode().splitlines():
                if line.startswith("etcd_debugging_mvcc_watcher_total "):
                    watchers += int(float(line.split()[1]))
                elif line.startswith("etcd_debugging_mvcc_watch_stream_total "):
                    streams += int(float(line.split()[1]))
    return watchers, streams


def watcher_process(endpoints: list[str], n: int, host: int, mode: str, out: Any, started: Any, ready: Any) -> None:
    """A host with a sidecar of each of ``n`` clusters: one watch each, each iterated in its own thread."""
    started.put(os.getpid())  # measured now: the process before it subscribes
    threading.stack_size(THREAD_STACK)
    base = EtcdStore(endpoints, "c0", prefix=PREFIX, timeout=5, retry_for=120)
    stores = [base] + [base.for_cluster(f"c{c}") for c in range(1, n)]

    def follow(c: int) -> None:
        store = stores[c]
        watch = store.watch() if mode == "shared" else RulesetWatch(store.transport, store.records, None, 10.0)
        first = True
        for view in watch:
            if first:
                with ready.get_lock():
                    ready.value += 1
                first = False
                continue
            out.put((host, c, view.revision, time.monotonic()))

    for c in range(n):
        threading.Thread(target=follow, args=(c,), daemon=True).start()
    threading.Event().wait()


def change(store: EtcdStore, phase: int) -> tuple[core.Ruleset, Any, Any]:
    """The next change of a cluster's cycle (add -> finalize -> remove -> finalize), and what it was read from."""
    snap, term = store.read_both()
    w = protocol.new_writer("fleet")
    if phase % 2 == 1:
        nxt = core.finalize(snap.ruleset, changed_by="fleet", now=protocol.now(), writer=w)
    else:
        what: core.Change = core.AddMember(SPARE) if phase % 4 == 0 else core.RemoveMember("pg3")
        nxt = core.propose(snap.ruleset, what, "pg0", changed_by="fleet", now=protocol.now(), writer=w)
    return nxt, snap, term


def run_size(n: int, args: argparse.Namespace) -> dict[str, float]:
    progress = ["--experimental-watch-progress-notify-interval", args.etcd_progress_notify]
    etcd = EtcdCluster(3, extra_args=progress).start()
    procs: list[mp.process.BaseProcess] = []
    try:
        store = EtcdStore(etcd.endpoints, "c0", prefix=PREFIX, timeout=5, retry_for=60)
        etcd_pids = [m.proc.pid for m in etcd.members if m.proc]
        time.sleep(2)
        (empty,) = standing([etcd_pids], args.idle)  # etcd with no cluster yet: its own heartbeats

        stores = [store] + [store.for_cluster(f"c{i}") for i in range(1, n)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: protocol.init(s, RULE, "pg0", actor="fleet"), stores))
        init_s = time.monotonic() - t0
        ctx = mp.get_context("spawn")
        out, started, ready = ctx.Queue(), ctx.Queue(), ctx.Value("i", 0)
        for k in range(args.hosts):
            rotated = etcd.endpoints[k % 3 :] + etcd.endpoints[: k % 3]  # hosts near different members
            p = ctx.Process(target=watcher_process, args=(rotated, n, k, args.mode, out, started, ready), daemon=True)
            p.start()
            procs.append(p)
        watcher_pids = [started.get(timeout=60) for _ in procs]
        bare_process = {p: cpu_rss(p) for p in watcher_pids}  # before any store or watch
        t0 = time.monotonic()
        while ready.value < args.hosts * n:
            if time.monotonic() - t0 > 600:
                raise TimeoutError(f"{ready.value} of {args.hosts * n} watches started in 600 s")
            time.sleep(0.2)
        subscribe_s = time.monotonic() - t0
        time.sleep(3)
        while not out.empty():
            out.get()

        seen: dict[tuple[int, int], dict[int, list[float]]] = {}  # (cluster, revision) -> host -> times
        order: dict[tuple[int, int], list[int]] = {}  # (host, cluster) -> revisions in the order observed
        stop = threading.Event()

        def collect() -> None:
            while not stop.is_set() or not out.empty():
                try:
                    host, c, rev, t = out.get(timeout=0.2)
                except queue.Empty:
                    continue
                seen.setdefault((c, rev), {}).setdefault(host, []).append(t)
                order.setdefault((host, c), []).append(rev)

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        me = os.getpid()
        before = {p: cpu_rss(p) for p in [*etcd_pids, *watcher_pids, me]}
        baseline = BareCas(etcd.leader().client_port)
        commits: dict[tuple[int, int], float] = {}
        committed: dict[int, list[int]] = {}  # cluster -> revisions in commit order
        phase = [0] * n  # each cluster's place in its add -> finalize -> remove -> finalize cycle
        rng = random.Random(n)
        t_start = time.monotonic()
        next_at = t_start
        while time.monotonic() - t_start < args.seconds:
            c = rng.randrange(n)
            nxt, snap, term = change(stores[c], phase[c])
            t0 = time.monotonic()
            rev = stores[c].commit(snap.revision, nxt, term_revision=term.revision)
            commits[(c, rev)] = t0
            committed.setdefault(c, []).append(rev)
            phase[c] += 1
            if len(commits) % 10 == 0:
                baseline.once()
            next_at += 1 / args.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        span = time.monotonic() - t_start
        after = {p: cpu_rss(p) for p in [*etcd_pids, *watcher_pids, me]}
        conns = connections({m.client_port for m in etcd.members})
        watches, streams = etcd_watches(etcd)
        time.sleep(2)
        stop.set()
        collector.join(10)
        # The standing cost of n clusters: no changes, only their keys, watches and etcd's progress
        # notifications. Changes come at the fleet's rate whatever its size, so this window, not the one
        # with changes, is where cost per cluster shows; a change's own cost is compared across sizes.
        still_etcd, still_watch = standing([etcd_pids, watcher_pids], args.idle)

        lat, missing = [], 0
        for key, t0 in commits.items():
            got = seen.get(key, {})
            if len(got) < args.hosts:
                missing += 1
                continue
            lat.append(max(min(ts) for ts in got.values()) - t0)
        # Every watcher saw exactly its cluster's commits, in commit order, each once.
        wrong = sum(
            1 for h in range(args.hosts) for c, revs in committed.items() if order.get((h, c), []) != revs
        ) + sum(1 for (h, c) in order if c not in committed)  # fmt: skip
        (etcd_cpu, etcd_rss), (watch_cpu, watch_rss) = (
            usage(before, after, g, span) for g in (etcd_pids, watcher_pids)
        )
        watch_bare_rss = sum(bare_process[p][1] for p in watcher_pids) / 2**20
        rate = len(commits) / span
        result = {
            "clusters": n,
            "changes": len(commits),
            "missing": missing,
            "wrong": wrong,
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "bare50": pct(baseline.samples, 50),
            "bare99": pct(baseline.samples, 99),
            "etcd_cpu": etcd_cpu,
            "watch_cpu": watch_cpu,
            "gen_cpu": usage(before, after, [me], span)[0],
            "conns": conns,
            "watches": watches,
            "streams": streams,
            "init_s": init_s,
            "subscribe_s": subscribe_s,
            "empty_cpu": empty[0],
            "empty_rss": empty[1],
            "still_etcd_cpu": still_etcd[0],
            "still_etcd_rss": still_etcd[1],
            "still_watch_cpu": still_watch[0],
            "still_watch_rss": still_watch[1],
            "watch_bare_rss": watch_bare_rss,
            # per cluster, standing: etcd over its empty self, the watchers over their processes before subscribing
            "etcd_cpu_pc": (still_etcd[0] - empty[0]) / n,
            "etcd_kb_pc": (still_etcd[1] - empty[1]) * 1024 / n,
            "watch_cpu_pc": still_watch[0] / n,
            "watch_kb_pc": (still_watch[1] - watch_bare_rss) * 1024 / n,
            # per change: what the changes add over the still fleet, per change per second
            "etcd_per_change": (etcd_cpu - still_etcd[0]) / rate,
            "watch_per_change": (watch_cpu - still_watch[0]) / rate,
        }
        store.close()
        return result
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join(10)
        etcd.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--rate", type=float, default=20.0, help="changes per second across the fleet")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of changes per size")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds still (no changes) per size")
    ap.add_argument("--hosts", type=int, default=3, help="watcher processes, each with a watcher of every cluster")
    ap.add_argument("--mode", choices=("shared", "private"), default="shared",
                    help="shared: one prefix watch per process (the hub); private: a stream per watcher")  # fmt: skip
    ap.add_argument("--etcd-progress-notify", default="5s", help="etcd's watch progress notify interval")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # etcd and the watchers inherit it

    rows = [run_size(int(n), args) for n in args.sizes.split(",")]
    print(f"bench/fleet: one 3-member etcd 3.4 on loopback ({os.cpu_count()} cores), {args.hosts} watcher processes "
          f"each following every cluster ({args.mode} watches), {args.rate:g} changes/s across the fleet for "
          f"{args.seconds:g} s, then {args.idle:g} s still; etcd progress notify {args.etcd_progress_notify}")  # fmt: skip
    print(f"  clusters  changes  seen by all {args.hosts}  commit->all {args.hosts} watchers p50 / p99 (x bare CAS)"
          "    conns  etcd watches/streams  init / subscribe")  # fmt: skip
    for r in rows:
        complete = int(r["changes"] - r["missing"])
        print(
            f"  {int(r['clusters']):>8}  {int(r['changes']):>7}  {complete:>7} of {int(r['changes']):<5} "
            f"{ms(r['p50'])} / {ms(r['p99'])} ({r['p50'] / r['bare50']:.2f}x / {r['p99'] / r['bare99']:.2f}x)  "
            f"{int(r['conns']):>5}  {int(r['watches']):>7} / {int(r['streams']):<5}  "
            f"{r['init_s']:5.1f} s / {r['subscribe_s']:5.1f} s"
            + (f"  ({int(r['missing'])} changes not seen by all {args.hosts}!)" if r["missing"] else "")
            + (
                f"  ({int(r['wrong'])} watchers saw a cluster's changes out of order, twice or not at all!)"
                if r["wrong"]
                else ""
            )  # fmt: skip
        )
    print("  still (no changes): etcd CPU / RSS (empty etcd), watchers CPU / RSS (before subscribing); with "
          "changes: etcd, watchers, generator CPU")  # fmt: skip
    for r in rows:
        print(
            f"  {int(r['clusters']):>8}  etcd {r['still_etcd_cpu']:5.1f}% / {r['still_etcd_rss']:5.0f} MB "
            f"({r['empty_cpu']:4.1f}% / {r['empty_rss']:4.0f} MB)  watchers {r['still_watch_cpu']:5.1f}% / "
            f"{r['still_watch_rss']:5.0f} MB ({r['watch_bare_rss']:4.0f} MB)  with changes: etcd "
            f"{r['etcd_cpu']:5.1f}%, watchers {r['watch_cpu']:5.1f}%, generator {r['gen_cpu']:5.1f}%"
        )
    print("  per cluster (standing, over empty) and per change/s (over still), % of a core and KB:")
    print("  clusters  etcd CPU/cluster  etcd KB/cluster  watchers CPU/cluster  watchers KB/cluster  "
          "etcd CPU/change  watchers CPU/change")  # fmt: skip
    for r in rows:
        print(
            f"  {int(r['clusters']):>8}  {r['etcd_cpu_pc']:15.5f}%  {r['etcd_kb_pc']:15.2f}  "
            f"{r['watch_cpu_pc']:19.5f}%  {r['watch_kb_pc']:19.2f}  {r['etcd_per_change']:14.3f}%  "
            f"{r['watch_per_change']:18.3f}%"
        )
    last = rows[-1]
    print(f"  at {int(last['clusters'])} clusters: propagation p99 {ms(last['p99'])} (target <= 50 ms); "
          f"{int(last['changes'] - last['missing'])} of {int(last['changes'])} changes seen by every watcher")  # fmt: skip
    if len(rows) >= 2:
        prev = rows[-2]
        a, b = int(prev["clusters"]), int(last["clusters"])
        print(f"  cost per cluster and per change at {b} vs {a} clusters (flat: target <= 1.5x):")

        def ratio(key: str) -> str:
            return f"{last[key] / prev[key]:.2f}x" if prev[key] > 0 else "n/a (none measured)"

        print(f"    etcd: memory per cluster {ratio('etcd_kb_pc')}, CPU per cluster {ratio('etcd_cpu_pc')} "
              f"(standing CPU over the empty etcd: {prev['still_etcd_cpu'] - prev['empty_cpu']:+.1f}% of a core at "
              f"{a}, {last['still_etcd_cpu'] - last['empty_cpu']:+.1f}% at {b}), CPU per change "
              f"{ratio('etcd_per_change')}")  # fmt: skip
        print(f"    watchers: memory per cluster {ratio('watch_kb_pc')}, CPU per cluster {ratio('watch_cpu_pc')}, "
              f"CPU per change {ratio('watch_per_change')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
