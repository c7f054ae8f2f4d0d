"""bench/storm: the same randomized fault schedules against each Patroni setup, one checker, one table.

For each seed, one schedule (tests/storm/schedule.py) is played against a fresh cluster of
every setup in turn (setups interleaved per seed, so that drift on the machine hits them
alike): a real 3-member etcd and four Patroni 4.x nodes, each in a network namespace of its
own. Three clients write unique ids throughout; after the heal the ledger is read on the
surviving primary and the checker (tests/storm/checker.py) reports, per setup:

* writes attempted and acknowledged; **lost** (acknowledged, not read), **unexpected** (read,
  never attempted), **recovered** (read, not acknowledged);
* **write availability**: the share of 0.1 s buckets with at least one acknowledged write;
* **seconds without a writable primary**: gaps of more than 1 s without an acknowledged write,
  summed per schedule (total, p50 and max over the schedules);
* **split-brain windows**: two nodes (on their timelines) acknowledging writes at the same time.

Setups: ``off`` (Patroni, sync off, ``ANY 1 (...)`` passed through: the naive setup, whose
losses prove that the checker sees a loss), ``quorum`` (Patroni's quorum mode), ``pgcohort``
(pgcohort ``any 1``), ``cross-zone`` (pgcohort ``cross-zone``, two zones); also ``quorum-strict``.

A pgcohort setup that loses a write, reads one never attempted or shows a split brain stops
the run (unless ``--keep-going``): its history is written to a JSON file and its replay printed.

    python bench/storm.py --schedules 3 [--seed 1] [--setups off,quorum,pgcohort,cross-zone]
    python bench/storm.py --seeds 7,12 --setups off,pgcohort
    python bench/storm.py --replay 7 --setup off         # the schedule, what happened, the verdict
    python bench/storm.py --check /tmp/storm            # the table again from stored histories
    python bench/storm.py --schedules 100 --reports run.jsonl   # resumable: played schedules are skipped
    python bench/storm.py --check run.jsonl             # the table of every schedule in a reports file

The product under test is whatever ``import pgcohort`` finds: to measure a commit while the
checkout moves, export its ``plugin/`` and ``adapters/`` and put both first on ``PYTHONPATH``
(Patroni's agents, the gate, the sidecars and the CLI inherit it); the footer names the commit
and where pgcohort was imported from.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.patroni import PATRONI  # noqa: E402
from tests.pg import PG_BIN  # noqa: E402
from tests.servers import ETCD  # noqa: E402
from tests.storm import checker  # noqa: E402
from tests.storm.run import SETUPS, Result, describe, history_from_json, run_schedule, to_json  # noqa: E402
from tests.storm.schedule import Schedule, generate  # noqa: E402

DEFAULT_SETUPS = "off,quorum,pgcohort,cross-zone"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(results: dict[str, list[checker.Report]], errors: dict[str, int] | None = None) -> str:
    """One row per setup: the checker's figures summed (and the unwritable seconds' p50/max) over its schedules."""
    errors = errors or {}
    head = (
        f"{'setup':<13}{'sched':>6}{'attempted':>10}{'acked':>8}{'lost':>7}{'unexp':>6}{'recov':>6}"
        f"{'avail':>8}{'unwritable s: total':>21}{'p50':>6}{'max':>6}{'split-brain':>12}"
        f"{'lossy':>6}{'no read':>8}{'errors':>7}"
    )
    rows = [head, "-" * len(head)]
    for setup, reps in results.items():
        if not reps:  # nothing played: only the harness errors, if any
            if errors.get(setup):
                rows.append(f"{setup:<13}{0:>6}{errors[setup]:>{len(head) - 19}}")
            continue
        unwritable = [r.unavailable for r in reps]
        rows.append(
            f"{setup:<13}{len(reps):>6}{sum(r.attempted for r in reps):>10}{sum(r.acknowledged for r in reps):>8}"
            f"{sum(len(r.lost) for r in reps):>7}{sum(len(r.unexpected) for r in reps):>6}"
            f"{sum(len(r.recovered) for r in reps):>6}"
            f"{statistics.mean(r.availability for r in reps):>8.1%}{sum(unwritable):>21.1f}"
            f"{statistics.median(unwritable):>6.1f}{max(unwritable):>6.1f}"
            f"{sum(len(r.split_brain) for r in reps):>12}{sum(1 for r in reps if r.lost):>6}"
            f"{sum(1 for r in reps if not r.final_read):>8}{errors.get(setup, 0):>7}"
        )
    rows.append(
        "avail: mean share of 0.1 s buckets with an acknowledged write; unwritable: seconds in gaps > 1 s without one; "
        "lossy: schedules that lost a write; no read: no primary within the recovery bound after the heal; "
        "errors: schedules the harness could not run (cluster build failed), not counted"
    )
    return "\n".join(rows)


def check_stored(where: str) -> str:
    """The table again from what a run stored: a reports file (``--reports``), or the histories ``--history-dir``
    wrote (judged again: the checker is pure, so this is the verdict)."""
    results: dict[str, list[checker.Report]] = {}
    errors: dict[str, int] = {}
    footer = ""
    if os.path.isfile(where):
        docs = stored_reports(where)
        played = {_key(doc) for doc in docs if "report" in doc}
        for doc in docs:
            if "report" in doc:
                results.setdefault(doc["setup"], []).append(checker.report_from_json(doc["report"]))
            elif _key(doc) not in played:  # a harness error not played again since
                errors[doc["setup"]] = errors.get(doc["setup"], 0) + 1
        commits = collections.Counter(doc["commit"] for doc in docs if "report" in doc)
        again = sum(1 for doc in docs if "error" in doc and _key(doc) in played)
        footer = "\nschedules per commit: " + ", ".join(f"{c}: {n}" for c, n in commits.most_common())
        footer += f"; harness errors played again later: {again}" if again else ""
    else:
        for name in sorted(os.listdir(where)):
            if name.startswith("storm-") and name.endswith(".json"):
                with open(os.path.join(where, name)) as f:
                    doc = json.load(f)
                results.setdefault(doc["setup"], []).append(checker.check(history_from_json(doc)))
    order = [s for s in SETUPS if s in results or s in errors]
    return table({s: results.get(s, []) for s in order}, errors) + footer


def stored_reports(path: str) -> list[dict[str, Any]]:
    """The lines of a reports file (none if it does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def store_report(path: str, result: Result, commit: str) -> None:
    """Append one schedule's verdict to the reports file: the checker's figures without the ops, a few hundred
    bytes, so a run of hundreds of schedules can be kept (and committed) and resumed in another session."""
    _store(path, result.setup, result.schedule, commit, {
        "build_seconds": round(result.build_seconds, 1),
        "recovery_seconds": None if result.recovery_seconds is None else round(result.recovery_seconds, 1),
        "total_seconds": round(result.total_seconds, 1),
        "report": checker.report_to_json(result.report),
    })  # fmt: skip


def store_error(path: str, setup: str, schedule: Schedule, commit: str, error: str) -> None:
    """Append a schedule the harness could not run: a resumed run plays it again, ``--check`` counts it until then."""
    _store(path, setup, schedule, commit, {"error": error})


def _store(path: str, setup: str, schedule: Schedule, commit: str, fields: dict[str, Any]) -> None:
    line = {**_identity(setup, schedule), "commit": commit, **fields}
    with open(path, "a") as f:
        f.write(json.dumps(line, separators=(",", ":")) + "\n")


def _identity(setup: str, schedule: Schedule) -> dict[str, Any]:
    """The fields of a line that name the schedule and the setup it was played on."""
    return {"setup": setup, "seed": schedule.seed, "generator": schedule.version, "length": schedule.length}


def _key(doc: dict[str, Any]) -> tuple[str, int, int, float]:
    """What makes two lines the same schedule on the same setup."""
    return (doc["setup"], doc["seed"], doc["generator"], doc["length"])


def machine(commit: str) -> str:
    """The machine, the servers' versions and ``commit`` (taken when the run started), for the docs."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines() if "model name" in line), "?"
    )
    mem = next((line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), "0")
    import pgcohort

    return "\n".join([
        f"machine: {platform.node()}, {platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
        f"{int(mem) // 1024} MB, load average {os.getloadavg()[0]:.2f} at the end",
        f"servers: {_version([PATRONI, '--version'])}, {_version([f'{PG_BIN}/postgres', '--version'])}, "
        f"{_version([ETCD, '--version']).splitlines()[0]}",
        f"commit: {commit} at the start; pgcohort imported from {', '.join(sorted(pgcohort.__path__))}",
    ])  # fmt: skip


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip() or "?"
    except OSError:
        return f"{argv[0]} missing"


def _commit() -> str:
    """HEAD, and whether the product (plugin/, adapters/) or only other files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True).stdout.strip()

    product = git("status", "--porcelain", "--", "plugin", "adapters")
    other = git("status", "--porcelain")
    state = "plugin/adapters differ from it" if product else ("other files differ" if other else "clean")
    return f"{git('rev-parse', '--short=12', 'HEAD')} ({state})"


def unsafe(result: Result) -> bool:
    """A pgcohort setup that lost a write, read one never attempted, or split its brain."""
    r = result.report
    return SETUPS[result.setup].gated and bool(r.lost or r.unexpected or r.split_brain)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", type=int, default=3, help="schedules per setup (seeds --seed, --seed+1, ...)")
    ap.add_argument("--seed", type=int, default=1, help="the first seed")
    ap.add_argument("--seeds", default="", help="explicit seeds, comma-separated (instead of --schedules/--seed)")
    ap.add_argument("--setups", default=DEFAULT_SETUPS, help=f"comma-separated, of {', '.join(SETUPS)}")
    ap.add_argument("--length", type=float, default=45.0, help="seconds of faults before the heal")
    ap.add_argument("--recover", type=float, default=120.0, help="seconds after the heal to wait for a primary")
    ap.add_argument("--replay", type=int, default=None, metavar="SEED", help="play one seed and describe it")
    ap.add_argument("--setup", default="pgcohort", help="with --replay: which setup")
    ap.add_argument("--history-dir", default="", help="write every schedule's history there as JSON")
    ap.add_argument("--measure-reuse", action="store_true", help="also time until every node streams again")
    ap.add_argument(
        "--reports",
        default="",
        metavar="FILE",
        help="append each schedule's verdict to FILE (JSON lines); schedules already in it are not played"
        " again, so a long run resumes where it stopped",
    )
    ap.add_argument(
        "--check",
        default="",
        metavar="PATH",
        help="print the table of a reports FILE, or of the histories stored in a DIR",
    )
    ap.add_argument("--keep-going", action="store_true", help="do not stop when a pgcohort setup is unsafe")
    args = ap.parse_args()

    if args.check:
        if not os.path.exists(args.check):
            ap.error(f"--check {args.check}: no such reports file or history directory (nothing was read)")
        print(check_stored(args.check))
        return 0
    if args.replay is not None:
        schedule = generate(args.replay, args.length)
        print(schedule.describe(), flush=True)
        result = run_schedule(schedule, SETUPS[args.setup], recover=args.recover)
        print(describe(result))
        _dump(result, args.history_dir)
        return 1 if unsafe(result) else 0

    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        ap.error(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or list(range(args.seed, args.seed + args.schedules))
    results: dict[str, list[Result]] = {s: [] for s in setups}
    errors: dict[str, int] = {}
    started, commit = time.monotonic(), _commit()
    done = {_key(d) for d in stored_reports(args.reports) if "report" in d} if args.reports else set()
    stopped = False
    for seed in seeds:
        schedule = generate(seed, args.length)
        for setup in setups:
            if _key(_identity(setup, schedule)) in done:
                print(f"{setup:<11} seed {seed:>4}: already in {args.reports}, not played again", flush=True)
                continue
            try:
                result = run_schedule(schedule, SETUPS[setup], recover=args.recover, measure_reuse=args.measure_reuse)
            except Exception as e:  # noqa: BLE001 (the harness could not run it: say so, count it, go on)
                errors[setup] = errors.get(setup, 0) + 1
                why = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"{setup:<11} seed {seed:>4}: HARNESS ERROR {why}", flush=True)
                if args.reports:
                    store_error(args.reports, setup, schedule, commit, why)
                continue
            results[setup].append(result)
            print(result.summary(), flush=True)
            if args.reports:
                store_report(args.reports, result, commit)
            if args.measure_reuse:
                reuse = "-" if result.reuse_seconds is None else f"{result.reuse_seconds:.1f}s"
                print(f"  build {result.build_seconds:.1f}s; after the heal, every node streaming again: {reuse}")
            if args.history_dir:
                _dump(result, args.history_dir)
            if SETUPS[setup].gated and not result.report.final_read:
                path = _dump(result, args.history_dir or "/tmp")
                print(f"NO PRIMARY after the heal: {setup} seed {seed}; history in {path}", flush=True)
            if unsafe(result):
                path = _dump(result, args.history_dir or "/tmp")
                print(f"\nUNSAFE: {setup} seed {seed}; history in {path}\n{describe(result)}", flush=True)
                if not args.keep_going:
                    stopped = True
                    break
        if stopped:
            break
    print(f"\n{len(seeds)} seeds x {len(setups)} setups, schedules of {args.length:.0f}s "
          f"(ttl 20, loop_wait 2, retry_timeout 5), {time.monotonic() - started:.0f}s in all")  # fmt: skip
    print(table({s: [r.report for r in got] for s, got in results.items()}, errors))
    print(machine(commit))
    return 1 if errors or any(unsafe(r) for got in results.values() for r in got) else 0


def _dump(result: Result, where: str) -> str:
    if not where:
        return ""
    os.makedirs(where, exist_ok=True)
    path = os.path.join(where, f"storm-{result.setup}-{result.schedule.seed}.json")
    with open(path, "w") as f:
        json.dump(to_json(result), f)
    return path


if __name__ == "__main__":
    sys.exit(main())
