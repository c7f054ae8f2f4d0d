from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pgcohort.core.rules import AnyK, Member, Rule
from pgcohort.store import EtcdStore
from tests.pg import PG_BIN, PgCluster
from tests.servers import ETCD, EtcdCluster
from tests.stack import Stack

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-schedules",
        type=int,
        default=int(os.environ.get("PGCOHORT_FAULT_SCHEDULES", "12")),
        help="how many seeded fault schedules tests/test_faults.py runs (default 12: seeds 1-12 hold every kind of fault)",
    )


@pytest.fixture
def fault_schedules(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--fault-schedules"))


def need(binary: str, what: str) -> None:
    """A missing server skips locally but fails under CI=true (never a silent green run)."""
    if shutil.which(binary) or os.path.exists(binary):
        return
    if IN_CI:
        pytest.fail(f"{what} ({binary}) is missing under CI=true: the test command must install it")
    pytest.skip(f"{what} ({binary}) not installed")


def need_servers() -> None:
    """etcd and PostgreSQL 15, for the tests that run the whole stack."""
    need(ETCD, "etcd-server")
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")


@pytest.fixture
def running_stack() -> Iterator[Stack]:
    """etcd, a PostgreSQL primary pg0 with standbys pg1-pg3, a sidecar each, setting applied."""
    need_servers()
    st = Stack().start(standbys=3)
    st.wait("the initial setting", lambda: st.primary_setting() == "ANY 1 (pg1, pg2, pg3)")
    yield st
    st.close()


@pytest.fixture
def pg() -> Iterator[PgCluster]:
    """A PostgreSQL 15 primary pg0 with streaming standbys pg1 and pg2."""
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    cluster = PgCluster()
    cluster.init_primary("pg0")
    cluster.add_standby("pg1", "pg0")
    cluster.add_standby("pg2", "pg0")
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def etcd3() -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster shared by the tests that do not break it."""
    need(ETCD, "etcd-server")
    cluster = EtcdCluster(3).start()
    yield cluster
    cluster.close()


@pytest.fixture
def etcd_private() -> Iterator[EtcdCluster]:
    """A 3-member cluster of the test's own, for tests that kill, pause or compact it."""
    need(ETCD, "etcd-server")
    cluster = EtcdCluster(3).start()
    yield cluster
    cluster.close()


@pytest.fixture
def cluster_name() -> str:
    return "t" + uuid.uuid4().hex[:10]


def make_store(etcd: EtcdCluster, cluster: str, **kw: Any) -> EtcdStore:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("retry_for", 15.0)
    return EtcdStore(etcd.endpoints, cluster, **kw)


@pytest.fixture
def store(etcd3: EtcdCluster, cluster_name: str) -> EtcdStore:
    return make_store(etcd3, cluster_name)


def three_members(policy: int = 1) -> Rule:
    return Rule(AnyK(policy), tuple(Member(f"pg{i}", "127.0.0.1", 5432 + i, f"z{i % 2}") for i in range(3)))
