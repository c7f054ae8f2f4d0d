"""bench/gate: the failover gate's own time for a 5-member cohort, beside a bare etcd CAS.

Native stack: 3-member etcd, a PostgreSQL 15 primary pg0 and standbys pg1-pg4, all five
in the cohort (`any 1`). Each round runs the gate as a failover would (read ruleset and
term, revoke and survey the four standbys in parallel, decide, CAS the new term) without
promoting, then puts everything back untimed: the term is CAS'd back to pg0 and the
standbys follow pg0 again. Printed: the gate's time, its survey and its CAS separately,
and a bare etcd CAS transaction on the same cluster in the same run.

    python bench/gate.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from etcd3gw.client import Etcd3Client  # noqa: E402

from adapters.postgres import PostgresNode  # noqa: E402
from plugin import gate  # noqa: E402
from plugin.core.ruleset import Term  # noqa: E402
from tests.race import connect  # noqa: E402
from tests.stack import Stack  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(s: float) -> str:
    return f"{s * 1000:7.2f} ms"


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

        def put_term(*a: object, **kw: object) -> object:
            t0 = time.monotonic()
            try:
                return original_put_term(*a, **kw)  # type: ignore[arg-type]
            finally:
                cas_times.append(time.monotonic() - t0)

        timed_store.put_term = put_term  # type: ignore[method-assign]
        leader = st.etcd.leader()
        bare_client = Etcd3Client(host="127.0.0.1", port=leader.client_port, api_path="/v3/", timeout=3)
        bare_client.session.trust_env = False
        key = base64.b64encode(b"/bench/bare").decode()
        bare_rev, bare, total, surveys = 0, [], [], []
        standbys = ["pg1", "pg2", "pg3", "pg4"]
        for i in range(args.rounds):
            t0 = time.monotonic()
            resp = bare_client.transaction(
                {
                    "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": bare_rev}],
                    "success": [{"request_put": {"key": key, "value": base64.b64encode(b"x" * 200).decode()}}],
                    "failure": [],
                }
            )
            bare.append(time.monotonic() - t0)
            bare_rev = int(resp["header"]["revision"])

            t0 = time.monotonic()
            snap, _ = store.read_both()
            found = gate.survey(snap.ruleset, "pg0", connect)
            surveys.append(time.monotonic() - t0)
            assert not found.unreachable, found.unreachable

            # The gate itself, end to end (it surveys again: the standbys are already revoked
            # now, so restore them first so that this survey does the full work).
            for name in standbys:
                n = PostgresNode(st.pg.nodes[name].dsn)
                n.follow(f"host=127.0.0.1 port={st.pg.nodes['pg0'].port} user=postgres application_name={name}")
                n.close()
            st.wait(
                "standbys streaming",
                lambda: all(PostgresNode(st.pg.nodes[n].dsn).observe().receiving for n in standbys),
                interval=0.01,
            )
            t0 = time.monotonic()
            outcome = gate.gate(timed_store, connect, actor="bench", writer=f"bench/{i}")  # type: ignore[arg-type]
            total.append(time.monotonic() - t0)

            # put things back, untimed
            snap, term = store.read_both()
            store.put_term(
                snap.revision,
                term.revision,
                Term(term.term.term + 1, "pg0", snap.revision, None, "bench", "", f"bench/back/{i}"),
            )
            for name in standbys:
                n = PostgresNode(st.pg.nodes[name].dsn)
                n.follow(f"host=127.0.0.1 port={st.pg.nodes['pg0'].port} user=postgres application_name={name}")
                n.close()
            st.wait(
                "standbys streaming",
                lambda: all(PostgresNode(st.pg.nodes[n].dsn).observe().receiving for n in standbys),
                interval=0.01,
            )
            assert outcome.candidate in standbys

        print(f"bench/gate: 5-member cohort (primary + 4 streaming standbys), 3-member etcd, {args.rounds} rounds")
        print(f"  bare etcd CAS txn                         p50 {ms(pct(bare, 50))}  p99 {ms(pct(bare, 99))}")
        print(f"  survey: revoke + read 4 standbys (parallel) p50 {ms(pct(surveys, 50))}  p99 {ms(pct(surveys, 99))}")
        print(f"  term CAS (ruleset + term compared)        p50 {ms(pct(cas_times, 50))}  p99 {ms(pct(cas_times, 99))}")
        print(
            f"  gate: read + survey + decide + CAS        p50 {ms(pct(total, 50))}  p99 {ms(pct(total, 99))}"
            f"  (target <= 100 ms; {pct(total, 50) / pct(bare, 50):.0f}x a bare CAS)"
        )
        return 0
    finally:
        st.close()


if __name__ == "__main__":
    sys.exit(main())
