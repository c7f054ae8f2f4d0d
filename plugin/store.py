"""The etcd store: the only module that talks to etcd (through etcd3gw's gateway client).

Promises (see ``docs/STORE.md`` for the measured behaviour behind them):

* **Endpoints rotate.** One etcd3gw client per endpoint, explicit ``api_path='/v3/'``, a
  timeout on every request, a shared session that ignores proxy/CA environment variables.
  A request that could not be sent (connection refused) moves to the next endpoint.
* **Reads are linearizable** (etcd's default range), so a decision never starts from a
  stale member's copy.
* **Writes are compare-and-swap on ``mod_revision``.** A ruleset commit compares the
  revision it was based on and writes the ``history/`` entry in the same transaction.
  The failure branch reads the winner in the same round trip (:class:`ConflictError`).
* **An ambiguous write is resolved by retrying the same CAS.** Every value carries a writer
  id; if the retry's compare fails and the current value carries our writer id, the first
  attempt committed. Only if no attempt gets a definite answer in time is
  :class:`IndeterminateError` raised.
* **Watching is our own loop** (etcd3gw's watch hangs forever on member death, compaction
  and errors): linearizable read, watch from the next revision with a read timeout, and on
  any error, silence or cancellation resync from a linearizable read on the next endpoint.
* int64 values arrive from the gateway as strings; they become :data:`Revision` here, once.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NewType, TypeVar
from urllib.parse import urlsplit

import requests
import tenacity
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from plugin.core.ruleset import Ruleset, Term, decode, decode_term, encode, encode_term
from plugin.errors import (
    ConflictError,
    IndeterminateError,
    InvalidInputError,
    InvalidRecordError,
    NotInitializedError,
    PgcohortError,
    RefusedError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)

Revision = NewType("Revision", int)
"""An etcd revision (a key's ``mod_revision`` or the store's header revision)."""

T = TypeVar("T")

# etcd's gRPC code for "Unavailable" and "Unauthenticated" as the gateway reports them.
_GRPC_UNAVAILABLE = 14
_GRPC_UNAUTHENTICATED = 16


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _prefix_end(prefix: str) -> str:
    """The ``range_end`` that covers every key starting with ``prefix`` (ASCII keys only)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _NotSent(Exception):
    """The request never reached etcd (connection refused): safe to send elsewhere."""


class _Unanswered(Exception):
    """The request may have reached etcd but got no definite answer (timeout, 503)."""


@dataclass(frozen=True)
class Snapshot:
    """The committed ruleset as read, with the revision to compare against when changing it."""

    ruleset: Ruleset
    revision: Revision
    """``mod_revision`` of the ruleset key: the CAS token."""


@dataclass(frozen=True)
class TermSnapshot:
    term: Term
    revision: Revision


@dataclass(frozen=True)
class View:
    """What a watcher observed at ``revision``: a ruleset, or the problem with the key."""

    revision: Revision
    ruleset: Ruleset | None
    problem: str = ""


@dataclass(frozen=True)
class StoreStats:
    """Counters a metrics exporter reads (the store itself imports no metrics library)."""

    requests: int
    errors: int
    rotations: int
    watch_resyncs: int
    watch_silences: int


class EtcdStore:
    """The pgcohort keys of one cluster in etcd: ``<prefix>/<cluster>/{ruleset,term,history/,nodes/}``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        cluster: str,
        *,
        prefix: str = "/pgcohort",
        timeout: float = 3.0,
        retry_for: float = 10.0,
        user: str | None = None,
        password: str | None = None,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        if not endpoints:
            raise InvalidInputError("no etcd endpoints given: set --etcd or PGCOHORT_ETCD_ENDPOINTS")
        if not cluster or "/" in cluster:
            raise InvalidInputError(f"invalid cluster name {cluster!r}: it must be non-empty and contain no '/'")
        if prefix.startswith("/service/") or prefix == "/service":
            raise InvalidInputError("the pgcohort prefix must not be under Patroni's /service/")
        self.endpoints = [self._parse_endpoint(e) for e in endpoints]
        self.root = f"{prefix.rstrip('/')}/{cluster}/"
        self.timeout = timeout
        self.retry_for = retry_for
        self._user, self._password = user, password
        self._observe = observe
        self._lock = threading.Lock()
        self._current = 0
        self._stats = {"requests": 0, "errors": 0, "rotations": 0, "watch_resyncs": 0, "watch_silences": 0}
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE / proxies must not redirect etcd traffic
        self._clients = [
            Etcd3Client(host=h, port=p, protocol=s, timeout=timeout, api_path="/v3/", session=self.session)
            for s, h, p in self.endpoints
        ]
        if user is not None:
            self._authenticate()

    # --- keys ---------------------------------------------------------------------------

    @property
    def ruleset_key(self) -> str:
        return self.root + "ruleset"

    @property
    def term_key(self) -> str:
        return self.root + "term"

    def history_key(self, version: int) -> str:
        return f"{self.root}history/{version:010d}"

    def term_history_key(self, term: int) -> str:
        return f"{self.root}history/term-{term:010d}"

    def node_key(self, name: str) -> str:
        return f"{self.root}nodes/{name}"

    # --- transport ----------------------------------------------------------------------

    @staticmethod
    def _parse_endpoint(text: str) -> tuple[str, str, int]:
        url = urlsplit(text if "://" in text else "http://" + text)
        if url.scheme not in ("http", "https") or not url.hostname or not url.port:
            raise InvalidInputError(f"invalid etcd endpoint {text!r}: write http://HOST:PORT")
        return url.scheme, url.hostname, url.port

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(**self._stats)

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _rotate(self, failed: int) -> None:
        with self._lock:
            if self._current == failed:
                self._current = (failed + 1) % len(self._clients)
                self._stats["rotations"] += 1

    def endpoint_url(self, index: int | None = None) -> str:
        s, h, p = self.endpoints[self._current if index is None else index]
        return f"{s}://{h}:{p}"

    def _authenticate(self) -> None:
        body = {"name": self._user, "password": self._password}
        resp = self._send_once("auth/authenticate", body)
        self.session.headers["Authorization"] = resp["token"]

    def _send_once(self, path: str, body: dict[str, Any]) -> Any:
        """One request to the current endpoint, classified into our error tree."""
        with self._lock:
            index = self._current
            self._stats["requests"] += 1
        client = self._clients[index]
        started = time.monotonic()
        ok = False
        try:
            resp = client.post(client.get_url(path), json=body)
            ok = True
            return resp
        except ConnectionFailedError as e:
            self._count("errors")
            self._rotate(index)
            text = str(e.detail_text or "")
            if "NewConnectionError" in text or "Connection refused" in text:
                raise _NotSent(f"{self.endpoint_url(index)}: connection refused") from None
            raise _Unanswered(f"{self.endpoint_url(index)}: {_short(text)}") from None
        except ConnectionTimeoutError as e:
            self._count("errors")
            self._rotate(index)
            raise _Unanswered(f"{self.endpoint_url(index)}: timed out ({_short(str(e.detail_text))})") from None
        except Etcd3Exception as e:
            self._count("errors")
            code = _grpc_code(e.detail_text)
            if code == _GRPC_UNAUTHENTICATED and self._user is not None and path != "auth/authenticate":
                self._authenticate()
                raise _NotSent("auth token expired; re-authenticated") from None
            if code == _GRPC_UNAVAILABLE:
                self._rotate(index)
                raise _Unanswered(f"{self.endpoint_url(index)}: {_short(str(e.detail_text))}") from None
            message = _etcd_message(e.detail_text)
            hint = ""
            if any(w in message for w in ("user name", "authentication", "permission denied", "auth token")):
                hint = "; check etcd.user and etcd.password (PGCOHORT_ETCD_USER, PGCOHORT_ETCD_PASSWORD)"
            raise StoreUnavailableError(f"etcd at {self.endpoint_url(index)} refused {path}: {message}{hint}") from None
        finally:
            if self._observe is not None:
                self._observe(path, time.monotonic() - started, ok)

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.retry_for),
            wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
            retry=tenacity.retry_if_exception_type((_NotSent, _Unanswered)),
            reraise=True,
        )

    def _read(self, path: str, body: dict[str, Any]) -> Any:
        """A read: any failure is retried on the next endpoint until ``retry_for`` runs out."""
        try:
            return self._retrying()(self._send_once, path, body)
        except (_NotSent, _Unanswered) as e:
            raise StoreUnavailableError(
                f"no etcd endpoint answered within {self.retry_for:g}s (last: {e}); nothing was "
                f"changed. Check the etcd cluster ({', '.join(self.endpoint_url(i) for i in range(len(self.endpoints)))})"
            ) from None

    def _range(
        self, key: str, *, prefix: bool = False, serializable: bool = False
    ) -> tuple[list[dict[str, Any]], Revision]:
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(_prefix_end(key))
        if serializable:
            body["serializable"] = True
        resp = self._read("kv/range", body)
        return list(resp.get("kvs", [])), Revision(int(resp["header"]["revision"]))

    def _txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> tuple[bool, Any]:
        """A write transaction, retried *unchanged* until a definite answer or ``retry_for``.

        Retrying the same compare is safe: if an earlier attempt committed, the compare now
        fails and the caller recognises its own writer id in the failure branch's read.
        """
        body = {"compare": compare, "success": success, "failure": failure}
        ambiguous: str | None = None
        try:
            for attempt in self._retrying():
                with attempt:
                    try:
                        resp = self._send_once("kv/txn", body)
                    except _Unanswered as e:
                        ambiguous = str(e)
                        raise
        except _NotSent as e:
            if ambiguous is None:
                raise StoreUnavailableError(
                    f"no etcd endpoint accepted the write within {self.retry_for:g}s ({e}); it was not "
                    "sent, nothing was changed"
                ) from None
            raise IndeterminateError(
                f"a write was sent but not confirmed ({ambiguous}) and etcd stayed unreachable; it "
                "may still commit. Re-read (`pgcohort status`) before trying again"
            ) from None
        except _Unanswered as e:
            raise IndeterminateError(
                f"a write was sent but not confirmed within {self.retry_for:g}s ({e}); it may still "
                "commit. Re-read (`pgcohort status`) before trying again"
            ) from None
        return bool(resp.get("succeeded", False)), resp

    # --- the ruleset --------------------------------------------------------------------

    def _snapshot(self, kv: dict[str, Any]) -> Snapshot:
        rev = Revision(int(kv["mod_revision"]))
        rs = decode(_unb64(kv.get("value", "")), f"{self.ruleset_key} (revision {rev})")
        return Snapshot(rs, rev)

    def read(self) -> Snapshot:
        """The committed ruleset (linearizable read)."""
        kvs, _ = self._range(self.ruleset_key)
        if not kvs:
            raise NotInitializedError(f"no ruleset at {self.ruleset_key}: run `pgcohort init` for this cluster first")
        return self._snapshot(kvs[0])

    def read_term(self) -> TermSnapshot:
        return self.read_both()[1]

    def read_both(self) -> tuple[Snapshot, TermSnapshot]:
        """The ruleset and the term at one revision: one read-only (linearizable) transaction."""
        ranges = [{"request_range": {"key": _b64(k)}} for k in (self.ruleset_key, self.term_key)]
        resp = self._read("kv/txn", {"compare": [], "success": ranges, "failure": []})
        found = [r.get("response_range", {}).get("kvs", []) for r in resp.get("responses", [])]
        if len(found) != 2 or not found[0] or not found[1]:
            raise NotInitializedError(
                f"no ruleset or term under {self.root}: run `pgcohort init` for this cluster first"
            )
        term_kv = found[1][0]
        rev = Revision(int(term_kv["mod_revision"]))
        term = TermSnapshot(decode_term(_unb64(term_kv.get("value", "")), f"{self.term_key} (revision {rev})"), rev)
        return self._snapshot(found[0][0]), term

    def init(self, ruleset: Ruleset, term: Term) -> Revision:
        """Create ruleset version 1, its history entry and term 1, only if none exist."""
        self._need_writer(ruleset.writer)
        compare = [
            {"key": _b64(self.ruleset_key), "target": "CREATE", "result": "EQUAL", "create_revision": 0},
            {"key": _b64(self.term_key), "target": "CREATE", "result": "EQUAL", "create_revision": 0},
        ]
        success = [
            _put(self.ruleset_key, encode(ruleset)),
            _put(self.history_key(ruleset.version), encode(ruleset)),
            _put(self.term_key, encode_term(term)),
            _put(self.term_history_key(term.term), encode_term(term)),
        ]
        ok, resp = self._txn(compare, success, [{"request_range": {"key": _b64(self.ruleset_key)}}])
        if ok:
            return Revision(int(resp["header"]["revision"]))
        kvs = _failure_kvs(resp)
        if kvs and _writer_of(kvs[0]) == ruleset.writer:
            return Revision(int(kvs[0]["mod_revision"]))
        raise RefusedError(
            f"refused init: cluster {self.root} is already initialized; nothing was changed. "
            "Use `pgcohort status` to see it"
        )

    def commit(self, expected: Revision, ruleset: Ruleset, *, term_revision: Revision | None = None) -> Revision:
        """CAS the ruleset from revision ``expected`` to ``ruleset``; write its history entry too.

        With ``term_revision`` the term must be unchanged as well (the change was validated
        against that term's primary). Returns the new revision; :class:`ConflictError` if
        someone else committed first.
        """
        self._need_writer(ruleset.writer)
        compare = [{"key": _b64(self.ruleset_key), "target": "MOD", "result": "EQUAL", "mod_revision": expected}]
        if term_revision is not None:
            compare.append(
                {"key": _b64(self.term_key), "target": "MOD", "result": "EQUAL", "mod_revision": term_revision}
            )
        success = [
            _put(self.ruleset_key, encode(ruleset)),
            _put(self.history_key(ruleset.version), encode(ruleset)),
        ]
        ok, resp = self._txn(compare, success, [{"request_range": {"key": _b64(self.ruleset_key)}}])
        if ok:
            return Revision(int(resp["header"]["revision"]))
        kvs = _failure_kvs(resp)
        if not kvs:
            raise NotInitializedError(f"no ruleset at {self.ruleset_key}: it was deleted; run `pgcohort init`")
        current = Revision(int(kvs[0]["mod_revision"]))
        if _writer_of(kvs[0]) == ruleset.writer:
            return current  # an earlier, unconfirmed attempt of ours committed
        raise ConflictError(
            f"the ruleset (or term) changed since revision {expected} (ruleset now {current}); nothing was written. "
            "Re-read and re-validate",
            current_revision=current,
        )

    def history(self) -> list[tuple[Revision, Ruleset]]:
        """Every committed ruleset, oldest first, with the revision it was written at."""
        return self._audit("history/0", decode)  # version keys, not history/term-*

    def term_history(self) -> list[tuple[Revision, Term]]:
        """Every committed term, oldest first (forced ones say so in ``forced``)."""
        return self._audit("history/term-", decode_term)

    def _audit(self, prefix: str, decoder: Callable[[bytes, str], T]) -> list[tuple[Revision, T]]:
        kvs, _ = self._range(self.root + prefix, prefix=True)
        out = []
        for kv in kvs:
            rev = Revision(int(kv["mod_revision"]))
            key = _unb64(kv["key"]).decode()
            out.append((rev, decoder(_unb64(kv.get("value", "")), f"{key} (revision {rev})")))
        return out

    def put_term(self, ruleset_revision: Revision, term_revision: Revision, term: Term) -> Revision:
        """Record a new term iff neither the ruleset nor the term changed since the survey."""
        self._need_writer(term.writer)
        compare = [
            {"key": _b64(self.ruleset_key), "target": "MOD", "result": "EQUAL", "mod_revision": ruleset_revision},
            {"key": _b64(self.term_key), "target": "MOD", "result": "EQUAL", "mod_revision": term_revision},
        ]
        failure = [{"request_range": {"key": _b64(self.term_key)}}, {"request_range": {"key": _b64(self.ruleset_key)}}]
        success = [_put(self.term_key, encode_term(term)), _put(self.term_history_key(term.term), encode_term(term))]
        ok, resp = self._txn(compare, success, failure)
        if ok:
            return Revision(int(resp["header"]["revision"]))
        responses = resp.get("responses", [])
        term_kvs = responses[0].get("response_range", {}).get("kvs", []) if responses else []
        if term_kvs and _writer_of(term_kvs[0]) == term.writer:
            return Revision(int(term_kvs[0]["mod_revision"]))
        raise ConflictError(
            f"the ruleset or term changed since the survey (ruleset revision {ruleset_revision}, term "
            f"revision {term_revision}); no term was written. Re-read and survey again"
        )

    @staticmethod
    def _need_writer(writer: str) -> None:
        if not writer:
            raise InvalidInputError("internal: every value written to etcd needs a writer id")

    # --- node records -------------------------------------------------------------------

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The leased status records under ``nodes/`` (malformed ones are reported, not raised)."""
        kvs, _ = self._range(self.root + "nodes/", prefix=True)
        out: dict[str, dict[str, Any]] = {}
        for kv in kvs:
            name = _unb64(kv["key"]).decode()[len(self.root + "nodes/") :]
            try:
                value = json.loads(_unb64(kv.get("value", "")))
                out[name] = value if isinstance(value, dict) else {"problem": "not a JSON object"}
            except ValueError:
                out[name] = {"problem": "not valid JSON"}
        return out

    def registration(self, name: str, ttl: int = 10) -> NodeRegistration:
        return NodeRegistration(self, name, ttl)

    def grant_lease(self, ttl: int) -> int:
        resp = self._read("lease/grant", {"TTL": ttl, "ID": 0})
        return int(resp["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns the new TTL, or 0 if the lease no longer exists."""
        resp = self._read("lease/keepalive", {"ID": lease})
        return int(resp.get("result", {}).get("TTL", 0))

    def put_leased(self, key: str, value: bytes, lease: int) -> None:
        self._read("kv/put", {"key": _b64(key), "value": _b64(value), "lease": lease})

    def delete(self, key: str) -> None:
        self._read("kv/deleterange", {"key": _b64(key)})

    # --- watching -----------------------------------------------------------------------

    def watch(self, since: Revision | None = None, *, silence: float = 10.0) -> RulesetWatch:
        return RulesetWatch(self, since, silence)


class NodeRegistration:
    """A node's leased ``nodes/<name>`` record. Call :meth:`publish` every ``ttl/3`` seconds."""

    def __init__(self, store: EtcdStore, name: str, ttl: int) -> None:
        self.store, self.name, self.ttl = store, name, ttl
        self.lease: int | None = None

    def publish(self, status: dict[str, Any]) -> None:
        """Renew the lease (granting a new one if it expired) and write ``status``."""
        if self.lease is None or self.store.keepalive(self.lease) <= 0:
            self.lease = self.store.grant_lease(self.ttl)
        value = json.dumps({"name": self.name, **status}, sort_keys=True).encode()
        self.store.put_leased(self.store.node_key(self.name), value, self.lease)

    def withdraw(self) -> None:
        self.store.delete(self.store.node_key(self.name))
        self.lease = None


class RulesetWatch:
    """Every committed ruleset, in revision order, surviving member death, compaction and silence.

    Iterating yields :class:`View` values with strictly increasing revisions. Without
    ``since`` the first one is the current ruleset (a linearizable read). With ``since``
    every later revision is delivered if etcd still has it; if it was compacted, the
    watcher resyncs to the current ruleset. Errors, EOF, silence longer than ``silence``
    seconds and cancellations close the stream and resync on the next endpoint.
    """

    def __init__(self, store: EtcdStore, since: Revision | None, silence: float) -> None:
        self.store = store
        self.last: Revision | None = since
        self.silence = silence
        self._closed = threading.Event()
        self._resp: requests.Response | None = None
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers.update(store.session.headers)
        # Ends the stream with an error when the member loses its leader, instead of silence.
        self.session.headers["Grpc-Metadata-hasleader"] = "true"

    def close(self) -> None:
        self._closed.set()
        resp = self._resp
        if resp is not None:
            _shutdown(resp)

    def __iter__(self) -> Iterator[View]:
        backoff = 0.05
        while not self._closed.is_set():
            try:
                yield from self._one_stream()
                backoff = 0.05
            except (requests.RequestException, ValueError, KeyError, _NotSent, _Unanswered, PgcohortError) as e:
                if self._closed.is_set():
                    return
                if "Read timed out" in str(e):
                    # Silence: idle, or a paused member. Re-verify with a linearizable read.
                    self.store._count("watch_silences")
                    continue
                log.info("watch on %s: %s; resyncing", self.store.endpoint_url(), _short(str(e)))
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            self.store._count("watch_resyncs")
            if self._closed.is_set():
                return

    def _view(self, kv: dict[str, Any]) -> View:
        rev = Revision(int(kv["mod_revision"]))
        try:
            return View(rev, self.store._snapshot(kv).ruleset)
        except InvalidRecordError as e:
            return View(rev, None, str(e))

    def _one_stream(self) -> Iterator[View]:
        store = self.store
        kvs, header = store._range(store.ruleset_key)  # linearizable: proves this member has quorum
        current = self._view(kvs[0]) if kvs else None
        if self.last is None:
            if current is not None:
                self.last = current.revision
                yield current
            start = header + 1
        else:
            start = self.last + 1
        self.session.headers.update(store.session.headers)  # a token renewed by the read above
        with store._lock:
            index = store._current
        url = store._clients[index].get_url("watch")
        body = {"create_request": {"key": _b64(store.ruleset_key), "start_revision": start, "progress_notify": True}}
        resp = self.session.post(url, json=body, stream=True, timeout=(store.timeout, self.silence))
        self._resp = resp
        try:
            if resp.status_code != 200:
                store._rotate(index)
                raise _Unanswered(f"watch refused with HTTP {resp.status_code}")
            buf = b""
            for chunk in resp.iter_content(chunk_size=None):
                if self._closed.is_set():
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        store._rotate(index)
                        raise _Unanswered(f"watch error: {msg['error'].get('message', msg['error'])}")
                    result = msg["result"]
                    if result.get("canceled") or result.get("compact_revision"):
                        # Our start revision is gone: jump to the current ruleset.
                        if current is not None and (self.last is None or current.revision > self.last):
                            self.last = current.revision
                            yield current
                        self.last = max(self.last or 0, header)  # type: ignore[assignment]
                        raise _Unanswered(f"watch canceled (compacted at {result.get('compact_revision')})")
                    for ev in result.get("events", []):
                        kv = ev["kv"]
                        rev = Revision(int(kv["mod_revision"]))
                        if self.last is not None and rev <= self.last:
                            continue  # duplicate or going backwards: never deliver twice
                        self.last = rev
                        if ev.get("type") == "DELETE":
                            yield View(rev, None, f"{store.ruleset_key} was deleted at revision {rev}")
                        else:
                            yield self._view(kv)
            store._rotate(index)
            raise _Unanswered("watch stream ended")
        finally:
            self._resp = None
            resp.close()


def _put(key: str, value: bytes) -> dict[str, Any]:
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def _failure_kvs(resp: Any) -> list[dict[str, Any]]:
    responses = resp.get("responses", [])
    if not responses:
        return []
    return list(responses[0].get("response_range", {}).get("kvs", []))


def _writer_of(kv: dict[str, Any]) -> str | None:
    try:
        value = json.loads(_unb64(kv.get("value", "")))
        return value.get("writer") if isinstance(value, dict) else None
    except ValueError:
        return None


def _grpc_code(detail: str | None) -> int | None:
    try:
        body = json.loads(detail or "")
        return int(body.get("code", body.get("error", {}).get("grpc_code")))
    except (ValueError, TypeError, AttributeError):
        return None


def _etcd_message(detail: str | None) -> str:
    try:
        return str(json.loads(detail or "")["message"])
    except (ValueError, TypeError, KeyError):
        return _short(str(detail))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) < 200 else text[:197] + "..."


def _shutdown(resp: requests.Response) -> None:
    """Unblock a thread reading ``resp`` (closing alone does not interrupt a blocked read)."""
    try:
        fd = resp.raw._fp.fileno()  # type: ignore[union-attr]
        with socket.socket(fileno=socket.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError, ValueError):
        pass
    resp.close()
