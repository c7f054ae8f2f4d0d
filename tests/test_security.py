"""Security on real servers: a 3-member etcd with client TLS (``--client-cert-auth``, certificates
made by the suite with trustme) and auth enabled, a role limited to the cluster's prefix, sidecars
serving HTTPS with a client CA, and PostgreSQL reached over verified TLS with a SCRAM password
from a passfile. Everything these tests print, log and export is scanned for secrets.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.core.rules import Member, parse_policy
from pgcohort.errors import AccessDeniedError, NotInitializedError, PostgresUnreachableError
from pgcohort.store import EtcdStore, Security, Snapshot
from tests.conftest import need, need_servers, three_members
from tests.pg import PgCluster, PgNode
from tests.servers import ETCD, Certs, EtcdCluster
from tests.stack import BIN, Stack, http_get

pytestmark = [pytest.mark.etcd]

TOKEN = re.compile(r"\b[A-Za-z]{16}\.\d+\b")  # etcd's simple auth tokens
TOKEN_TTL = 3  # seconds an unused token lives (etcd --auth-token-ttl)


@dataclass
class Secure:
    """The TLS + auth etcd cluster and the credentials made for it."""

    etcd: EtcdCluster
    certs: Certs
    root_password: str
    password: str  # of user "pgcohort" (role limited to /pgcohort/sec*/ and Patroni's config key)
    password_file: str
    outsider_password: str  # of user "outsider" (role limited to /pgcohort/other/)

    def security(self, **kw: str | None) -> Security:
        base: dict[str, str | None] = {
            "user": "pgcohort",
            "password_file": self.password_file,
            "cacert": self.certs.path("ca.pem"),
            "cert": self.certs.path("client.pem"),
            "key": self.certs.path("client-key.pem"),
        }
        return Security(**(base | kw))

    def env(self, cluster: str, **over: str) -> dict[str, str]:
        """A command's environment: the right certificates and the role's password file."""
        env = {
            "PATH": os.environ["PATH"],
            "PGCOHORT_CLUSTER": cluster,
            "PGCOHORT_ETCD_ENDPOINTS": ",".join(self.etcd.endpoints),
            "PGCOHORT_ETCD_RETRY_FOR": "2",
            "PGCOHORT_ETCD_USER": "pgcohort",
            "PGCOHORT_ETCD_PASSWORD_FILE": self.password_file,
            "PGCOHORT_ETCD_CACERT": self.certs.path("ca.pem"),
            "PGCOHORT_ETCD_CERT": self.certs.path("client.pem"),
            "PGCOHORT_ETCD_KEY": self.certs.path("client-key.pem"),
        }
        env.update(over)
        return {k: v for k, v in env.items() if v}

    def secrets(self) -> list[str]:
        return [self.root_password, self.password, self.outsider_password, *self.certs.secrets()]

    def keys(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its mod_revision (read as root): the state a refusal must not change."""
        out = self.etcd.ctl("get", "--prefix", prefix, "-w", "json", user=f"root:{self.root_password}").stdout
        return {kv["key"]: int(kv["mod_revision"]) for kv in json.loads(out).get("kvs", [])}


@pytest.fixture(scope="module")
def secure() -> Iterator[Secure]:
    need(ETCD, "etcd-server")
    root = tempfile.mkdtemp(prefix="pgcohort-tls-")
    os.chmod(root, 0o755)
    certs = Certs.make(os.path.join(root, "certs"))
    for name in os.listdir(certs.dir):  # PostgreSQL (as postgres) copies the server certificate
        os.chmod(certs.path(name), 0o644 if not name.endswith("-key.pem") else 0o600)
    cluster = EtcdCluster(3, certs=certs, auth_token_ttl=TOKEN_TTL).start()
    s = Secure(cluster, certs, "root-" + uuid.uuid4().hex, "pgc-" + uuid.uuid4().hex,
               os.path.join(root, "etcd-password"), "out-" + uuid.uuid4().hex)  # fmt: skip
    with open(s.password_file, "w") as f:
        f.write(s.password + "\n")
    os.chmod(s.password_file, 0o600)
    for args in (
        ["user", "add", f"root:{s.root_password}"],
        ["user", "add", f"pgcohort:{s.password}"],
        ["role", "add", "pgcohort"],
        ["role", "grant-permission", "pgcohort", "--prefix=true", "readwrite", "/pgcohort/sec/"],
        ["role", "grant-permission", "pgcohort", "--prefix=true", "readwrite", "/pgcohort/sec2/"],
        ["role", "grant-permission", "pgcohort", "readwrite", "/service/sec/config"],
        ["user", "grant-role", "pgcohort", "pgcohort"],
        ["user", "add", f"outsider:{s.outsider_password}"],
        ["role", "add", "outsider"],
        ["role", "grant-permission", "outsider", "--prefix=true", "readwrite", "/pgcohort/other/"],
        ["user", "grant-role", "outsider", "outsider"],
        ["auth", "enable"],
    ):
        cluster.ctl(*args)
    yield s
    cluster.close()


def initialized(store: EtcdStore) -> Snapshot:
    """The cluster's ruleset, made first if this is the first test to use the cluster."""
    try:
        return store.read()
    except NotInitializedError:
        return protocol.init(store, three_members(), "pg0", actor="t").snapshot


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=60)


def assert_no_secrets(s: Secure, texts: dict[str, str]) -> None:
    for where, text in texts.items():
        for secret in s.secrets():
            assert secret not in text, f"a password or key line appears in {where}"
        assert not TOKEN.search(text), f"an etcd auth token appears in {where}: {TOKEN.search(text)}"
        assert "PRIVATE KEY" not in text, where


def test_a_prefix_role_over_mutual_tls_runs_everything(secure: Secure) -> None:
    """Init, sidecars (leases, node records, watch, apply, barrier, finalize), add, remove, status, history,
    the gate and watch, all as the role limited to /pgcohort/sec/, over mutual TLS; the sidecars serve HTTPS
    to clients with a certificate only, answer GET only, and reach PostgreSQL over verified TLS with a
    passfile. Nothing printed, logged or exported holds a password, token or key."""
    need_servers()
    s, cluster = secure, "sec"
    pg_password = "pg-" + uuid.uuid4().hex
    passfile = os.path.join(s.certs.dir, "..", "pgpass")
    with open(passfile, "w") as f:
        f.write(f"127.0.0.1:*:*:pgcohort:{pg_password}\n")
    os.chmod(passfile, 0o600)
    ca = s.certs.path("ca.pem")
    env = s.env(cluster)
    sidecar_env = {
        k: v
        for k, v in env.items()
        if k.startswith("PGCOHORT_ETCD") and k not in ("PGCOHORT_ETCD_ENDPOINTS", "PGCOHORT_ETCD_RETRY_FOR")
    } | {
        "PGCOHORT_SIDECAR_TLS_CERT": s.certs.path("server.pem"),
        "PGCOHORT_SIDECAR_TLS_KEY": s.certs.path("server-key.pem"),
        "PGCOHORT_SIDECAR_TLS_CLIENT_CA": ca,
    }

    def dsn(node: PgNode) -> str:
        return (
            f"host=127.0.0.1 port={node.port} user=pgcohort dbname=postgres sslmode=verify-full "
            f"sslrootcert={ca} passfile={passfile} connect_timeout=3"
        )

    st = Stack(
        cluster=cluster,
        etcd=s.etcd,
        security=s.security(),
        extra_env=sidecar_env,
        sidecar_tls=s.certs.client_context(),
        prepare_primary=lambda pg, node: pg.secure(node, s.certs.dir, "pgcohort", pg_password),
        dsn_for=dsn,
    )
    outputs: dict[str, str] = {}
    try:
        st.start(standbys=2)
        st.wait("the initial setting", lambda: st.primary_setting() == "ANY 1 (pg1, pg2)", timeout=40)
        store = st.store()

        def stable_with(setting: str) -> bool:
            return st.primary_setting() == setting and store.read().ruleset.phase == "stable"

        for step, args, setting in (
            ("remove", ["remove", "pg2"], "ANY 1 (pg1)"),
            ("add", ["add", f"pg2@127.0.0.1:{st.pg.nodes['pg2'].port}/zone-b"], "ANY 1 (pg1, pg2)"),
        ):
            done = run(env, *args)
            assert done.returncode == 0, done.stderr
            outputs[step] = done.stdout + done.stderr
            st.wait(f"{step} applied and finalized", lambda setting=setting: stable_with(setting), timeout=40)
        for args in (["status"], ["status", "--json"], ["history"], ["history", "--terms"],
                     ["gate", "--candidate", "pg0"], ["watch", "--count", "1"]):  # fmt: skip
            done = run(env, *args)
            assert done.returncode == 0, f"{args}: {done.stderr}"
            outputs[" ".join(args)] = done.stdout + done.stderr
        assert "term 1 already names pg0" in outputs["gate --candidate pg0"]
        assert store.decision("pg0") is not None  # the gate recorded its decision under the prefix

        car = st.sidecars["pg0"]
        st.wait("pg0's sidecar healthy", lambda: car.get("/health")[0] == 200)
        for path in ("/health", "/ruleset", "/metrics"):
            code, body = car.get(path)
            assert code == 200, path
            outputs[path] = body if isinstance(body, str) else json.dumps(body)
        assert "pgcohort_invalid_record" in outputs["/metrics"]
        anonymous = ssl.create_default_context(cafile=ca)  # verifies the sidecar, shows no certificate
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            http_get(car.url + "/health", context=anonymous)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            http_get(f"http://127.0.0.1:{car.port}/health")
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            req = urllib.request.Request(car.url + "/ruleset", method=method, data=b"{}")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=2, context=s.certs.client_context())  # noqa: S310 (loopback)
            refused.value.close()
            assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"
        assert store.read().ruleset.version == 5  # nothing the HTTP calls did changed the ruleset
        for name, c in st.sidecars.items():
            outputs[f"sidecar {name} log"] = c.log
        assert "https://" in st.sidecars["pg1"].log
    finally:
        st.close()
        if "store" in locals():
            store.close()
    assert_no_secrets(s, outputs)
    for text in outputs.values():
        assert pg_password not in text


@pytest.mark.parametrize(
    ("what", "over", "message"),
    [
        ("no client certificate", {"PGCOHORT_ETCD_CERT": "", "PGCOHORT_ETCD_KEY": ""},
         "asks for a client certificate (--client-cert-auth): set etcd.cert and etcd.key"),
        ("a CA that did not sign etcd's certificate", {"PGCOHORT_ETCD_CACERT": "other-ca.pem"},
         "etcd's server certificate was not verified: set etcd.cacert"),
        ("a client certificate from another CA",
         {"PGCOHORT_ETCD_CERT": "stranger.pem", "PGCOHORT_ETCD_KEY": "stranger-key.pem"},
         "refused the client certificate"),
        ("a wrong password", {"PGCOHORT_ETCD_PASSWORD_FILE": "", "PGCOHORT_ETCD_PASSWORD": "not-it"},
         "authentication failed"),
        ("a role outside the prefix",
         {"PGCOHORT_ETCD_USER": "outsider", "PGCOHORT_ETCD_PASSWORD_FILE": "", "PGCOHORT_ETCD_PASSWORD": "OUTSIDER"},
         "permission denied. Nothing was changed"),
        ("no user", {"PGCOHORT_ETCD_USER": "", "PGCOHORT_ETCD_PASSWORD_FILE": ""}, "user name is empty"),
        ("http:// to an HTTPS etcd", {"PGCOHORT_ETCD_CACERT": "", "PGCOHORT_ETCD_CERT": "", "PGCOHORT_ETCD_KEY": "",
                                       "PGCOHORT_ETCD_ENDPOINTS": "HTTP"},
         "if etcd serves TLS, write its endpoints as https://HOST:PORT and set etcd.cacert"),
    ],
)  # fmt: skip
def test_wrong_credentials_are_refused_with_the_fix_and_change_nothing(
    secure: Secure, what: str, over: dict[str, str], message: str
) -> None:
    s, cluster = secure, "sec2"
    with EtcdStore(s.etcd.endpoints, cluster, security=s.security(), timeout=2, retry_for=5) as good:
        initialized(good)
    over = {
        k: (s.certs.path(v) if v.endswith(".pem") else v)
        .replace("OUTSIDER", s.outsider_password)
        .replace("HTTP", ",".join(e.replace("https", "http") for e in s.etcd.endpoints))
        for k, v in over.items()
    }
    before = s.keys(f"/pgcohort/{cluster}/")
    assert before
    outputs = {}
    for args in (["add", "pg9"], ["status"]):
        done = run(s.env(cluster, **over), *args)
        assert done.returncode == (5 if "http://" in what else 10), f"{what}: {done.returncode} {done.stderr}"
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        outputs[f"{what}: {args[0]}"] = done.stdout + done.stderr
    assert s.keys(f"/pgcohort/{cluster}/") == before, f"{what} changed etcd"
    assert_no_secrets(s, outputs)


def test_an_expired_token_is_renewed_without_a_restart(secure: Secure) -> None:
    """A store idle past the token TTL, and a watch across it, keep working; a rotated password is read
    from the password file at the next renewal."""
    s, cluster = secure, "sec2"
    store = EtcdStore(s.etcd.endpoints, cluster, security=s.security(), timeout=2, retry_for=5)
    initialized(store)
    views = store.watch(silence=1.0)
    seen = iter(views)
    try:
        first = next(seen).revision
        time.sleep(TOKEN_TTL + 1.5)  # the store's token is gone now
        assert store.read().revision == first
        time.sleep(TOKEN_TTL + 1.5)
        done = protocol.propose(store, core.SetPolicy(parse_policy("any 2")), actor="t")
        assert next(seen).revision == done.snapshot.revision  # the watch went on across expiries
    finally:
        views.close()
    protocol.finalize(store, actor="t")

    new = "rotated-" + uuid.uuid4().hex
    subprocess.run(
        ["etcdctl", "--endpoints", ",".join(s.etcd.endpoints), "--cacert", s.certs.path("ca.pem"),
         "--cert", s.certs.path("client.pem"), "--key", s.certs.path("client-key.pem"),
         "--user", f"root:{s.root_password}", "user", "passwd", "pgcohort", "--interactive=false"],
        input=new + "\n", env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True, text=True,
    )  # fmt: skip
    with open(s.password_file, "w") as f:
        f.write(new + "\n")
    try:
        time.sleep(TOKEN_TTL + 1.5)
        assert store.read().ruleset.version >= 3  # re-authenticated with the rotated password
    finally:
        s.password = new
        store.close()


def test_the_documented_patroni_role_writes_patronis_config_key(secure: Secure) -> None:
    """The role of docs/SECURITY.md (readwrite on the prefix and on Patroni's config key) is what the Patroni
    adapter needs; without the config key grant the same write is refused and nothing changes."""
    s = secure
    root = EtcdStore(s.etcd.endpoints, "sec", security=Security(
        user="root", password=s.root_password, cacert=s.certs.path("ca.pem"),
        cert=s.certs.path("client.pem"), key=s.certs.path("client-key.pem")))  # fmt: skip
    config = {"loop_wait": 10, "synchronous_mode": False, "postgresql": {"parameters": {}}}
    s.etcd.ctl("put", "/service/sec/config", json.dumps(config), user=f"root:{s.root_password}")
    s.etcd.ctl("put", "/service/sec2/config", json.dumps(config), user=f"root:{s.root_password}")
    store = EtcdStore(s.etcd.endpoints, "sec", security=s.security(), timeout=2, retry_for=5)
    other = EtcdStore(s.etcd.endpoints, "sec2", security=s.security(), timeout=2, retry_for=5)
    with root, store, other:
        snap = initialized(store)
        key = store.patroni_config("sec")
        key.write_setting(snap.revision, key.read(), "ANY 1 (pg1, pg2)")
        assert root.patroni_config("sec").read().setting == "ANY 1 (pg1, pg2)"
        other_snap = initialized(other)
        before = s.keys("/")
        with pytest.raises(AccessDeniedError, match="permission denied"):
            other.patroni_config("sec2").read()
        with pytest.raises(AccessDeniedError, match="permission denied"):
            other.patroni_config("sec2").write_setting(other_snap.revision, key.read(), "ANY 1 (pg1)")
        assert s.keys("/") == before


def test_postgres_over_verified_tls_with_a_passfile(secure: Secure) -> None:
    """The adapter and the gate's connector reach PostgreSQL through libpq's own means: sslmode=verify-full,
    sslrootcert, passfile. A wrong CA or a plain connection is refused with a message that names the
    server and never the password."""
    need_servers()
    from pgcohort.adapters import postgres

    s = secure
    pg = PgCluster()
    password = "pg-" + uuid.uuid4().hex
    try:
        node = pg.init_primary("pg0")
        pg.secure(node, s.certs.dir, "pgcohort", password)
        passfile = os.path.join(pg.root, "pgpass")
        with open(passfile, "w") as f:
            f.write(f"127.0.0.1:{node.port}:*:pgcohort:{password}\n")
        os.chmod(passfile, 0o600)
        options = f"user=pgcohort dbname=postgres passfile={passfile} connect_timeout=3"
        good = f"host=127.0.0.1 port={node.port} sslmode=verify-full sslrootcert={s.certs.path('ca.pem')} {options}"
        sidecar_node = postgres.PostgresNode(good)
        member = Member("pg0", "127.0.0.1", node.port, "zone-a")
        gate_node = postgres.connector(f"sslmode=verify-full sslrootcert={s.certs.path('ca.pem')} {options}")(member)
        try:
            assert sidecar_node.observe().primary
            assert gate_node.observe().primary
        finally:
            sidecar_node.close()
            gate_node.close()
        messages = []
        for bad, why in (
            (good.replace("ca.pem", "other-ca.pem"), "certificate verify failed"),
            (good.replace("sslmode=verify-full", "sslmode=disable"), "rejects connection"),
            (f"postgresql://pgcohort:{password}@127.0.0.1:{node.port}/postgres?sslmode=disable", "rejects"),
        ):
            with pytest.raises(PostgresUnreachableError) as e:
                postgres.PostgresNode(bad).observe()
            assert why in str(e.value) and f"127.0.0.1:{node.port}" in str(e.value)
            messages.append(str(e.value))
        for m in messages:
            assert password not in m
    finally:
        pg.close()
