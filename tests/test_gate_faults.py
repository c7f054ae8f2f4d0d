"""The gate with etcd in trouble fails closed: refused, nothing written, a message that says what to do.

Real PostgreSQL 15 and a real 3-member etcd; the gate (``pgcohort gate``, as Patroni's
``pre_promote`` runs it) reaches etcd through proxies (``tests/proxy.py``) that stop
answering, answer 10 s late, or hold the term's write while etcd's leader is killed. Every
time: a non-zero exit, the term unchanged, and once etcd answers again the gate allows the
right member. ``tests/test_patroni_safety.py`` shows Patroni promoting nobody meanwhile.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from pgcohort.store.transport import b64
from tests.proxy import Proxies
from tests.race import acked_write, create_ledger
from tests.stack import BIN, Stack

pytestmark = [pytest.mark.pg, pytest.mark.etcd, pytest.mark.fault, pytest.mark.slow]


@pytest.fixture
def st() -> Iterator[tuple[Stack, Proxies]]:
    stack = Stack(cluster=f"faults{time.monotonic_ns() % 10**6}").start(standbys=2)
    proxies = Proxies(stack.etcd_cluster).start()
    try:
        create_ledger(stack.pg.nodes["pg0"].dsn)
        assert acked_write(stack.pg.nodes["pg0"].dsn, 1)
        stack.sidecars["pg0"].kill()
        stack.pg.crash(stack.pg.nodes["pg0"])
        yield stack, proxies
    finally:
        proxies.close()
        stack.close()


def gate(st: Stack, proxies: Proxies, *extra: str, **env: str) -> subprocess.Popen[str]:
    """``pgcohort gate --candidate pg1`` as the pre_promote hook, its etcd behind the proxies (1 s per request,
    3 s of retries, as tests/patroni.py configures Patroni's nodes)."""
    environ = {
        **st.sidecars["pg1"].env,
        "PGCOHORT_ETCD_ENDPOINTS": ",".join(proxies.endpoints),
        "PGCOHORT_ETCD_TIMEOUT": "1",
        "PGCOHORT_ETCD_RETRY_FOR": "3",
        "PGCOHORT_ACTOR": "gate@pg1",
        **env,
    }
    return subprocess.Popen(
        [BIN, "gate", "--candidate", "pg1", *extra], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], within: float) -> tuple[int, str, str, float]:
    started = time.monotonic()
    out, err = proc.communicate(timeout=within)
    return proc.returncode, out, err, time.monotonic() - started


@pytest.mark.parametrize("trouble", ["stopped", "10 s network delay"])
def test_the_gate_refuses_while_etcd_does_not_answer(st: tuple[Stack, Proxies], trouble: str) -> None:
    stack, proxies = st
    before = stack.store().read_both()[1]
    proxies.set("blackhole") if trouble == "stopped" else proxies.set("delay", delay=10)
    code, out, err, took = finish(gate(stack, proxies), 60)
    assert code == 5, out + err
    assert "no etcd endpoint answered" in err and "nothing was changed" in err, err
    assert took < 20, f"the gate took {took:.0f}s: a hook must answer in bounded time"
    proxies.reset()
    assert stack.store().read_both()[1] == before, "a term was written while etcd did not answer"
    code, out, err, _ = finish(gate(stack, proxies), 60)
    assert code == 0 and "pg1 may now be promoted" in out, out + err


def test_the_gate_refuses_when_its_term_write_gets_no_answer(st: tuple[Stack, Proxies]) -> None:
    """The term's write is on its way when etcd's leader is killed, and no answer ever comes back: the gate
    cannot know whether it committed, so it refuses (exit 6); the write never reached etcd, so the term is
    unchanged; with etcd whole again, the gate allows pg1."""
    stack, proxies = st
    before = stack.store().read_both()[1]
    term_key = f"/pgcohort/{stack.cluster}/term"
    proxies.set("hold", marker=f'"request_put": {{"key": "{b64(term_key)}"'.encode())
    proc = gate(stack, proxies)
    stack.wait("the term's write on its way", proxies.held, 30)
    leader = stack.etcd_cluster.leader()
    stack.etcd_cluster.kill(leader)
    code, out, err, _ = finish(proc, 60)
    assert code == 6, out + err
    assert "may still commit" in err and "Re-read" in err, err
    stack.etcd_cluster.restart(leader)
    proxies.reset()
    assert stack.store().read_both()[1] == before
    code, out, err, _ = finish(gate(stack, proxies), 60)
    assert code == 0 and "pg1 may now be promoted" in out, out + err


def test_an_unreachable_etcd_is_never_taken_for_an_unmanaged_cluster(st: tuple[Stack, Proxies]) -> None:
    """gate.unmanaged: allow lets Patroni promote alone where no ruleset exists; etcd not answering is not that."""
    stack, proxies = st
    proxies.set("blackhole")
    code, out, err, _ = finish(gate(stack, proxies, PGCOHORT_GATE_UNMANAGED="allow"), 60)
    assert code == 5, out + err
    assert "WITHOUT pgcohort's check" not in err
