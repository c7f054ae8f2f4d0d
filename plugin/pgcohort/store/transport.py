"""Talking to etcd: the only module that imports etcd3gw (and requests, its HTTP library).

Promises (the measurements behind them are in ``docs/STORE.md``):

* **Endpoints rotate.** One etcd3gw client per endpoint, explicit ``api_path='/v3/'``, a
  timeout on every request, a shared session that ignores proxy/CA environment variables.
  A request that could not be sent (connection refused) moves to the next endpoint.
* **Reads are linearizable** (etcd's default range) and retried on the next endpoint
  until ``retry_for`` runs out. Every request's first attempt is sent directly; only a
  failed one enters tenacity's schedule (an immediate retry on the next endpoint, then
  exponential backoff), so the retry machinery costs nothing while etcd answers.
* **Writes are sent unchanged until a definite answer.** A transaction whose answer was
  lost may have committed: :meth:`Transport.txn` retries the *same* compare, and raises
  :class:`IndeterminateError` only if no attempt got a definite answer in time. Callers
  recognise their own earlier attempt by the writer id in the value.
* **Token auth** renews an expired token once per request and retries it; a password file
  is re-read at each renewal (rotation without a restart). Neither ever appears in a message.
* **TLS**: a CA bundle for the server certificates (host names checked), a client
  certificate and key for ``--client-cert-auth``; a failed handshake is an
  :class:`AccessDeniedError` naming the setting to fix, not a retry.
* int64 values arrive from the gateway as strings; they become :data:`Revision` here.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import tenacity
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from pgcohort.errors import AccessDeniedError, IndeterminateError, InvalidInputError, StoreUnavailableError
from pgcohort.seams import Revision, StoreStats

# etcd's gRPC codes as the gateway reports them.
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAVAILABLE = 14
_GRPC_UNAUTHENTICATED = 16


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that covers every key starting with ``prefix`` (ASCII keys only)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def put(key: str, value: bytes) -> dict[str, Any]:
    """A put operation for a transaction's success or failure branch."""
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def get(key: str) -> dict[str, Any]:
    """A range operation (one key) for a transaction branch."""
    return {"request_range": {"key": b64(key)}}


def mod_equals(key: str, revision: int) -> dict[str, Any]:
    """Compare: the key's ``mod_revision`` is ``revision`` (0: the key does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}


def absent(key: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def branch_kvs(resp: Any, index: int) -> list[dict[str, Any]]:
    """The kvs a transaction's ``index``-th range operation returned."""
    responses = resp.get("responses", [])
    if len(responses) <= index:
        return []
    return list(responses[index].get("response_range", {}).get("kvs", []))


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) < 200 else text[:197] + "..."


class NotSent(Exception):
    """The request never reached etcd (connection refused): safe to send elsewhere."""


class Unanswered(Exception):
    """The request may have reached etcd but got no definite answer (timeout, 503)."""


@dataclass(frozen=True)
class Security:
    """How to prove who we are to etcd and check who it is. Secrets stay out of ``repr``."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    cacert: str | None = None  # CA bundle for etcd's server certificates; None: the system's
    cert: str | None = None  # client certificate (PEM)
    key: str | None = None  # its private key (PEM)

    def current_password(self) -> str:
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as e:
                raise AccessDeniedError(
                    f"cannot read etcd.password_file {self.password_file} ({e.strerror}); nothing was changed"
                ) from None
        return self.password or ""

    def session(self) -> requests.Session:
        """A requests session with these TLS settings, ignoring proxy and CA environment variables."""
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE / proxies must not redirect etcd traffic
        if self.cacert:
            session.verify = self.cacert
        if self.cert and self.key:
            session.cert = (self.cert, self.key)
        return session


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @staticmethod
    def parse(text: str) -> Endpoint:
        try:
            url = urlsplit(text if "://" in text else "http://" + text)
            scheme, host, port = url.scheme, url.hostname, url.port  # .port raises on a non-numeric port
        except ValueError:
            scheme, host, port = "", None, None
        if scheme not in ("http", "https") or not host or not port or any(c.isspace() for c in text):
            raise InvalidInputError(f"invalid etcd endpoint {text!r}: write http://HOST:PORT")
        return Endpoint(scheme, host, port)


class Transport:
    """Requests to an etcd cluster through its JSON gateway, with rotation, retries and auth."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 3.0,
        retry_for: float = 10.0,
        security: Security | None = None,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        if not endpoints:
            raise InvalidInputError("no etcd endpoints given: set --etcd or PGCOHORT_ETCD_ENDPOINTS")
        self.endpoints = [Endpoint.parse(e) for e in endpoints]
        self.timeout = timeout
        self.retry_for = retry_for
        self.security = security or Security()
        self._user = self.security.user
        self._observe = observe
        self._lock = threading.Lock()
        self._current = 0
        self._stats = {"requests": 0, "errors": 0, "rotations": 0, "watch_resyncs": 0, "watch_silences": 0}
        self.session = self.security.session()
        self._clients = [
            Etcd3Client(
                host=e.host, port=e.port, protocol=e.scheme, timeout=timeout, api_path="/v3/", session=self.session
            )
            for e in self.endpoints
        ]
        if self._user is not None:
            self._authenticate()

    def close(self) -> None:
        """Close the pooled connections (a TLS socket left to the garbage collector warns)."""
        self.session.close()

    # --- endpoints and counters -------------------------------------------------------

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(**self._stats)

    def count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def current(self) -> int:
        with self._lock:
            return self._current

    def failed(self, index: int) -> None:
        """Endpoint ``index`` failed: move to the next one (unless another thread already did)."""
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._clients)
                self._stats["rotations"] += 1

    def url(self, index: int | None = None) -> str:
        return self.endpoints[self.current() if index is None else index].url

    def all_urls(self) -> str:
        return ", ".join(e.url for e in self.endpoints)

    def api_url(self, index: int, path: str) -> str:
        return str(self._clients[index].get_url(path))

    def headers(self) -> dict[str, str]:
        """Headers a separate session (the watch's) must send: the auth token, if any."""
        return dict(self.session.headers)  # type: ignore[arg-type]

    # --- requests ---------------------------------------------------------------------

    def _authenticate(self) -> None:
        self.session.headers.pop("Authorization", None)  # etcd refuses to authenticate a request with a dead token
        password = self.security.current_password()
        resp = self.request("auth/authenticate", {"name": self._user, "password": password})
        self.session.headers["Authorization"] = resp["token"]

    def _send_once(self, path: str, body: dict[str, Any]) -> Any:
        """One request to the current endpoint, classified into our error tree (the one translation point)."""
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
            self.count("errors")
            self.failed(index)
            text = str(e.detail_text or "")
            if "SSLError" in text or "SSL:" in text:
                raise AccessDeniedError(self._tls_problem(index, text)) from None
            if "NewConnectionError" in text or "Connection refused" in text:
                raise NotSent(f"{self.url(index)}: connection refused") from None
            hint = ""
            if self.endpoints[index].scheme == "http" and (
                "RemoteDisconnected" in text or "Connection aborted" in text
            ):
                hint = " (if etcd serves TLS, write its endpoints as https://HOST:PORT and set etcd.cacert)"
            raise Unanswered(f"{self.url(index)}: {short(text)}{hint}") from None
        except ConnectionTimeoutError as e:
            self.count("errors")
            self.failed(index)
            raise Unanswered(f"{self.url(index)}: timed out ({short(str(e.detail_text))})") from None
        except Etcd3Exception as e:
            self.count("errors")
            code = grpc_code(e.detail_text)
            if code == _GRPC_UNAUTHENTICATED and self._user is not None and path != "auth/authenticate":
                self._authenticate()
                raise NotSent("auth token expired; re-authenticated") from None
            if code == _GRPC_UNAVAILABLE:
                self.failed(index)
                raise Unanswered(f"{self.url(index)}: {short(str(e.detail_text))}") from None
            message = etcd_message(e.detail_text)
            if code in (_GRPC_PERMISSION_DENIED, _GRPC_UNAUTHENTICATED) or any(
                w in message for w in ("user name", "authentication", "permission denied", "auth token")
            ):
                raise AccessDeniedError(
                    f"etcd at {self.url(index)} denied {path}: {message}. Nothing was changed. Check etcd.user "
                    "and its password (PGCOHORT_ETCD_PASSWORD or etcd.password_file), and that the user's role "
                    "grants readwrite on this cluster's prefix (docs/SECURITY.md)"
                ) from None
            raise StoreUnavailableError(f"etcd at {self.url(index)} refused {path}: {message}") from None
        finally:
            if self._observe is not None:
                self._observe(path, time.monotonic() - started, ok)

    def _tls_problem(self, index: int, text: str) -> str:
        """What a failed TLS handshake means, and which setting fixes it (never the key's contents)."""
        where = f"the TLS handshake with etcd at {self.url(index)} failed"
        reason = text.split("SSLError(", 2)[-1].split("(_ssl.c")[0].strip(" ('\"") if "SSLError(" in text else ""
        if "CERTIFICATE_VERIFY_FAILED" in text or "Hostname mismatch" in text or "doesn't match" in text:
            fix = (
                "etcd's server certificate was not verified: set etcd.cacert to the CA that signed it "
                f"(now: {self.security.cacert or 'the system CAs'}) and use the host name the certificate names"
            )
        elif self.security.cert is None:
            fix = "etcd asks for a client certificate (--client-cert-auth): set etcd.cert and etcd.key"
        else:
            fix = (
                f"etcd refused the client certificate {self.security.cert}: it must be signed by etcd's "
                "--trusted-ca-file, unexpired, and match etcd.key"
            )
        return f"{where}: {fix}. Nothing was changed{f' ({short(reason)})' if reason else ''}"

    def _attempts(self, send: Callable[[], Any]) -> Any:
        """``send()`` once, outside any retry machinery; after a failure (NotSent, Unanswered),
        again on tenacity's schedule (at once, then backing off) until ``retry_for`` after the
        first attempt. The last failure is raised."""
        started = time.monotonic()
        try:
            return send()
        except (NotSent, Unanswered):
            pass  # an endpoint that failed was already left for the next
        deadline = started + self.retry_for
        return tenacity.Retrying(
            stop=lambda _: time.monotonic() >= deadline,
            wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
            retry=tenacity.retry_if_exception_type((NotSent, Unanswered)),
            reraise=True,
        )(send)

    def request(self, path: str, body: dict[str, Any]) -> Any:
        """A read, or a write that is safe to repeat (a leased put, a delete): retried on any failure."""
        try:
            return self._attempts(lambda: self._send_once(path, body))
        except (NotSent, Unanswered) as e:
            raise StoreUnavailableError(
                f"no etcd endpoint answered within {self.retry_for:g}s (last: {e}); nothing was "
                f"changed. Check the etcd cluster ({self.all_urls()})"
            ) from None

    def range(
        self, key: str, *, prefix: bool = False, serializable: bool = False
    ) -> tuple[list[dict[str, Any]], Revision]:
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        if serializable:
            body["serializable"] = True
        resp = self.request("kv/range", body)
        return list(resp.get("kvs", [])), Revision(int(resp["header"]["revision"]))

    def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> tuple[bool, Any]:
        """A write transaction, retried *unchanged* until a definite answer or ``retry_for``.

        Retrying the same compare is safe: if an earlier attempt committed, the compare now
        fails and the caller recognises its own writer id in what the failure branch read.
        """
        body = {"compare": compare, "success": success, "failure": failure}
        ambiguous: str | None = None

        def send() -> Any:
            nonlocal ambiguous
            try:
                return self._send_once("kv/txn", body)
            except Unanswered as e:
                ambiguous = str(e)
                raise

        try:
            resp = self._attempts(send)
        except NotSent as e:
            if ambiguous is None:
                raise StoreUnavailableError(
                    f"no etcd endpoint accepted the write within {self.retry_for:g}s ({e}); it was not "
                    "sent, nothing was changed"
                ) from None
            raise IndeterminateError(
                f"a write was sent but not confirmed ({ambiguous}) and etcd stayed unreachable; it "
                "may still commit. Re-read (`pgcohort status`) before trying again"
            ) from None
        except Unanswered as e:
            raise IndeterminateError(
                f"a write was sent but not confirmed within {self.retry_for:g}s ({e}); it may still "
                "commit. Re-read (`pgcohort status`) before trying again"
            ) from None
        return bool(resp.get("succeeded", False)), resp


def grpc_code(detail: str | None) -> int | None:
    """The gRPC code of a gateway error body: ``{"code": N}`` (etcd 3.4), or ``{"error": {"grpc_code": N}}``."""
    try:
        body = json.loads(detail or "")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    code = body.get("code", error.get("grpc_code") if isinstance(error, dict) else None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def etcd_message(detail: str | None) -> str:
    try:
        return str(json.loads(detail or "")["message"])
    except (ValueError, TypeError, KeyError):
        return short(str(detail))


def writer_of(kv: dict[str, Any]) -> str | None:
    """The writer id stored in a value, if it is a JSON object that has one."""
    try:
        value = json.loads(unb64(kv.get("value", "")))
        return value.get("writer") if isinstance(value, dict) else None
    except ValueError:
        return None
