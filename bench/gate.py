"""bench/gate: the failover gate's own time for a 5-member cohort, beside a bare etcd CAS.

Native stack: 3-member etcd, a PostgreSQL 15 primary pg0 and standbys pg1-pg4, all five
in the cohort (`any 1`). Each round runs the gate as a failover would (read ruleset, term
and confirmation, fence and survey the four standbys in parallel, decide, CAS the new term)
without promoting, then puts everything back untimed: the term is CAS'd back to pg0 and the
standbys follow pg0 again. Printed: the gate's time, its survey and its CAS separately, what
reading one fenced standby's end of valid WAL costs (its pg_wal listed, walked record by
record from its replay position), and a bare etcd CAS transaction on the same cluster in
the same run.

    python bench/gate.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import BareCas, ms, pct  # noqa: E402
from pgcohort import gate  # noqa: E402
from pgcohort.adapters.postgres import PostgresNode  # noqa: E402
from pgcohort.core.term import Term  # noqa: E402
from pgcohort.seams import Revision, TermSnapshot  # noqa: E402
from tests.race import connect  # noqa: E402
from tests.stack import Stack  # noqa: E402


def restore(st: Stack, standbys: list[str]) -> None:
    """Undo a survey's revoke: the standbys follow pg0 again and stream."""
    for name in standbys:
        node = PostgresNode(st.pg.nodes[name].dsn)
        node.follow(st.member("pg0"))
        node.close()

    def streaming() -> bool:
        nodes = [PostgresNode(st.pg.nodes[n].dsn) for n in standbys]
        try:
            return all(n.observe().receiving for n in nodes)
        finally:
            for n in nodes:
                n.close()

    st.wait("standbys streaming", streaming, interval=0.01)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    st = Stack()
    try:
        st.start(standbys=4, sidecars=False)
        store = st.store()
        timed_store = st.store()
        cas_times: list[float] = []
        original_put_term = timed_store.put_term

        def put_term(ruleset_revision: Revision, based_on: TermSnapshot, term: Term) -> Revision:
            t0 = time.monotonic()
            try:
                return original_put_term(ruleset_revision, based_on, term)
            finally:
                cas_times.append(time.monotonic() - t0)

        timed_store.put_term = put_term  # type: ignore[method-assign]
        baseline = BareCas(st.etcd_cluster.leader().client_port)
        total: list[float] = []
        surveys: list[float] = []
        helds: list[float] = []
        standbys = ["pg1", "pg2", "pg3", "pg4"]
        for i in range(args.rounds):
            baseline.once()

            t0 = time.monotonic()
            snap, _ = store.read_both()
            found = gate.survey(snap.ruleset, "pg0", connect)
            surveys.append(time.monotonic() - t0)
            assert not found.unreachable, found.unreachable
            node = PostgresNode(st.pg.nodes[standbys[i % len(standbys)]].dsn)
            node.observe()  # the session first, as the survey's is
            t0 = time.monotonic()
            node.held()
            helds.append(time.monotonic() - t0)
            node.close()

            # The gate itself, end to end (it surveys again: the standbys are already revoked
            # now, so restore them first so that this survey does the full work).
            restore(st, standbys)
            t0 = time.monotonic()
            outcome = gate.gate(timed_store, connect, actor="bench", writer=f"bench/{i}")
            total.append(time.monotonic() - t0)

            # put things back, untimed
            snap, term = store.read_both()
            store.put_term(
                snap.revision,
                term,
                Term(term.term.term + 1, "pg0", snap.revision, None, "bench", "", f"bench/back/{i}"),
            )
            restore(st, standbys)
            assert outcome.candidate in standbys

        bare = baseline.samples
        print(f"bench/gate: 5-member cohort (primary + 4 streaming standbys), 3-member etcd, {args.rounds} rounds")
        print(f"  bare etcd CAS txn                         p50 {ms(pct(bare, 50))}  p99 {ms(pct(bare, 99))}")
        print(f"  survey: fence + read 4 standbys (parallel)  p50 {ms(pct(surveys, 50))}  p99 {ms(pct(surveys, 99))}")
        print(f"  of which, one standby's end of valid WAL  p50 {ms(pct(helds, 50))}  p99 {ms(pct(helds, 99))}")
        print(f"  term CAS (ruleset, term, confirmation)    p50 {ms(pct(cas_times, 50))}  p99 {ms(pct(cas_times, 99))}")
        print(
            f"  gate: read + survey + decide + CAS        p50 {ms(pct(total, 50))}  p99 {ms(pct(total, 99))}"
            f"  (target <= 100 ms; {pct(total, 50) / pct(bare, 50):.0f}x a bare CAS)"
        )
        return 0
    finally:
        st.close()


if __name__ == "__main__":
    sys.exit(main())
