"""Every compare of every etcd transaction, each shown refusing a writer that acts on a stale read.

Real 3-member etcd. For each compare: the writer reads, something moves the compared key,
the writer writes from its stale read; the write is refused and nothing changes.
``tests/mutations/catalog.py`` removes each compare in turn, and the test named beside it
catches that. The transactions: ``init`` (and Patroni's adoption), propose and finalize
(``commit``), the failover's term (``put_term``), the confirmation (``confirm``),
``restore``, and the setting in Patroni's configuration key (``write_setting``).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.core.rules import Member
from pgcohort.core.term import Confirmation, Timeline
from pgcohort.errors import ConflictError, RefusedError
from pgcohort.seams import TermSnapshot
from pgcohort.store import EtcdStore
from tests.conftest import three_members
from tests.race import StaleOnce
from tests.servers import EtcdCluster

pytestmark = pytest.mark.etcd


@pytest.fixture
def cluster(store: EtcdStore) -> EtcdStore:
    protocol.init(store, three_members(), "pg0", actor="a")
    return store


def failover(store: EtcdStore, to: str) -> None:
    """A gate elsewhere commits a term naming ``to``."""
    snap, term = store.read_both()
    store.put_term(snap.revision, term, term.term.next(to, snap.revision, writer=protocol.new_writer("elsewhere")))


def confirm(store: EtcdStore, based_on: TermSnapshot, timeline: int = 1) -> None:
    t = based_on.term
    store.confirm(based_on, Confirmation(t.term, t.primary, Timeline(timeline), None, t.primary, "", "c/1"))


# --- init ---------------------------------------------------------------------------------------------------


def test_init_refuses_where_any_of_the_records_exists(etcd3: EtcdCluster, cluster: EtcdStore) -> None:
    """The ruleset was deleted by hand; the term and its confirmation are still there: init creates nothing."""
    term, confirmed = (etcd3.get_raw(cluster.root + k) for k in ("term", "confirmed"))
    etcd3.delete_raw(cluster.root + "ruleset")
    with pytest.raises(RefusedError, match="already initialized"):
        protocol.init(cluster, three_members(), "pg1", actor="b")
    assert etcd3.get_raw(cluster.root + "ruleset") is None
    assert (etcd3.get_raw(cluster.root + "term"), etcd3.get_raw(cluster.root + "confirmed")) == (term, confirmed)


# --- commit: propose and finalize ------------------------------------------------------------------------------


def test_a_change_validated_against_a_moved_term_is_refused(cluster: EtcdStore) -> None:
    """Removing pg1 was valid under term 1 (pg0 primary); a failover to pg1 lands before the commit: refused."""
    stale = cluster.read_both()
    failover(cluster, "pg1")
    before = cluster.read()
    with pytest.raises(RefusedError, match="refused remove pg1: it is the primary"):
        protocol.propose(StaleOnce(cluster, stale), core.RemoveMember("pg1"), actor="b")
    assert cluster.read() == before


def test_a_finalize_read_before_a_failover_is_refused(cluster: EtcdStore) -> None:
    protocol.propose(cluster, core.AddMember(Member("pg3")), actor="a")
    decided_on = cluster.read_both()
    failover(cluster, "pg1")
    with pytest.raises(ConflictError):
        protocol.finalize(cluster, actor="pg0's sidecar", based_on=decided_on)
    assert cluster.read().ruleset.phase == "joint"


def test_a_proposal_on_a_stale_ruleset_is_refused(cluster: EtcdStore) -> None:
    stale = cluster.read_both()
    protocol.propose(cluster, core.AddMember(Member("pg3")), actor="a")
    before = cluster.read()
    ours = core.propose(stale[0].ruleset, core.AddMember(Member("pg4")), "pg0", changed_by="b", now="", writer="b/1")
    with pytest.raises(ConflictError):
        cluster.commit(stale[0].revision, ours, term_revision=stale[1].revision)
    assert cluster.read() == before


# --- the failover's term ----------------------------------------------------------------------------------------


def test_a_term_decided_on_a_stale_ruleset_is_refused(cluster: EtcdStore) -> None:
    snap, term = cluster.read_both()
    protocol.propose(cluster, core.AddMember(Member("pg3")), actor="a")
    with pytest.raises(ConflictError, match="survey again"):
        cluster.put_term(snap.revision, term, term.term.next("pg1", snap.revision, writer="g/1"))
    assert cluster.read_both()[1].term == term.term


def test_a_term_decided_before_a_confirmation_is_refused(cluster: EtcdStore) -> None:
    """A gate read term 2 (pg1, never seen running) and reasoned from pg0; then pg1's sidecar records that pg1
    runs: the gate reasoned from the wrong primary, and its term must not land."""
    failover(cluster, "pg1")
    snap, term = cluster.read_both()
    assert not term.confirmed
    confirm(cluster, term, timeline=2)
    with pytest.raises(ConflictError):
        cluster.put_term(snap.revision, term, term.term.next("pg2", snap.revision, writer="g/2"))
    now = cluster.read_both()[1]
    assert now.term.primary == "pg1" and now.confirmed


# --- the confirmation -------------------------------------------------------------------------------------------


def test_a_confirmation_of_a_superseded_term_is_refused(cluster: EtcdStore) -> None:
    """pg1's sidecar read term 2 naming pg1; term 3 (pg2) lands before it records that pg1 runs: refused, or the
    failover rule would reason from pg1 again."""
    failover(cluster, "pg1")
    read = cluster.read_both()[1]
    failover(cluster, "pg2")
    before = cluster.read_both()[1]
    with pytest.raises(ConflictError):
        confirm(cluster, read, timeline=2)
    assert cluster.read_both()[1] == before


def test_a_confirmation_never_goes_back(cluster: EtcdStore) -> None:
    """Two writers of term 1's confirmation (init's, without a timeline, and the sidecar's): the one that read
    before the other wrote is refused, so the recorded timeline never goes back."""
    read = cluster.read_both()[1]
    confirm(cluster, read, timeline=1)
    after = cluster.read_both()[1]
    assert after.confirmation is not None
    with pytest.raises(ConflictError):
        cluster.confirm(read, replace(after.confirmation, timeline=None, writer="stale/1"))
    assert cluster.read_both()[1] == after


# --- restore ------------------------------------------------------------------------------------------------------


def test_a_restore_racing_a_writer_writes_nothing(etcd3: EtcdCluster, cluster: EtcdStore) -> None:
    etcd3.put_raw(cluster.root + "ruleset", b"garbage")
    stale = cluster.records.raw("")
    etcd3.put_raw(cluster.root + "ruleset", b"other garbage")  # someone else writes in between
    cluster.records.raw = lambda if_missing: stale  # type: ignore[method-assign]
    with pytest.raises(ConflictError):
        cluster.restore(actor="sre", writer="r/1", now="")
    del cluster.records.raw
    assert etcd3.get_raw(cluster.root + "ruleset") == b"other garbage"


# --- Patroni's configuration key --------------------------------------------------------------------------------

PATRONI = {
    "ttl": 30,
    "loop_wait": 10,
    "synchronous_mode": False,
    "postgresql": {"parameters": {"max_connections": 100}},
}


def config_json(etcd3: EtcdCluster, key: str) -> object:
    raw = etcd3.get_raw(key)
    assert raw is not None
    return json.loads(raw)


def patroni_key(etcd3: EtcdCluster, store: EtcdStore) -> str:
    key = f"/service/{store.root.split('/')[-2]}/config"
    etcd3.put_raw(key, json.dumps(PATRONI).encode())
    return key


def test_a_setting_rendered_from_a_stale_ruleset_is_not_written(etcd3: EtcdCluster, cluster: EtcdStore) -> None:
    key = patroni_key(etcd3, cluster)
    config = cluster.patroni_config(key.split("/")[2])
    snap = cluster.read()
    protocol.propose(cluster, core.AddMember(Member("pg3")), actor="a")
    with pytest.raises(ConflictError, match="nothing was written"):
        config.write_setting(snap.revision, config.read(), "ANY 1 (pg1, pg2)")
    assert config_json(etcd3, key) == PATRONI


def test_a_setting_over_a_racing_edit_config_is_not_written(etcd3: EtcdCluster, cluster: EtcdStore) -> None:
    key = patroni_key(etcd3, cluster)
    config = cluster.patroni_config(key.split("/")[2])
    read = config.read()
    edited = {**PATRONI, "loop_wait": 5}  # patronictl edit-config, in between
    etcd3.put_raw(key, json.dumps(edited).encode())
    with pytest.raises(ConflictError, match="nothing was written"):
        config.write_setting(cluster.read().revision, read, "ANY 1 (pg1, pg2)")
    assert config_json(etcd3, key) == edited


def test_an_adoption_over_a_racing_edit_config_writes_nothing(etcd3: EtcdCluster, store: EtcdStore) -> None:
    key = patroni_key(etcd3, store)
    config = store.patroni_config(key.split("/")[2])
    read = config.read()
    edited = {**PATRONI, "loop_wait": 5}
    etcd3.put_raw(key, json.dumps(edited).encode())
    rs, term = protocol.first(three_members(), "pg0", actor="a")
    with pytest.raises(ConflictError, match="nothing was\\s+written"):
        config.adopt(rs, term, read, "ANY 1 (pg1, pg2)")
    assert config_json(etcd3, key) == edited
    with pytest.raises(Exception, match="no ruleset"):
        store.read()
