"""Watching the ruleset: our own loop, because etcd3gw's watch hangs forever on member death,
compaction and errors.

Each stream starts with a linearizable read (which also proves the member has quorum),
watches from the next revision with a read timeout, on the leader when it is one of the
endpoints (:class:`LeaderHint`), and on any error, EOF, silence or cancellation resyncs from
a linearizable read on the next endpoint. Views are delivered in strictly increasing
revision order and never twice.

:func:`open_stream`, :func:`lines` and :func:`event_view` are shared with the hub
(:mod:`pgcohort.store.hub`), which serves many clusters from one stream.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import requests

from pgcohort.errors import InvalidRecordError, PgcohortError
from pgcohort.seams import Revision, View
from pgcohort.store.records import Records
from pgcohort.store.transport import NotSent, Transport, Unanswered, b64, short

log = logging.getLogger(__name__)

_MAX_CHUNK_LINE = 1024  # a chunk-size line is a hex number and maybe extensions: far shorter


class Silent(Exception):
    """The stream said nothing for ``silence`` seconds (not even a progress notification)."""


# What ends one stream and starts the next (after a linearizable read, on the next endpoint).
STREAM_ERRORS = (requests.RequestException, OSError, ValueError, KeyError, NotSent, Unanswered, PgcohortError)


def leader_index(transport: Transport) -> int | None:
    """The index of the configured endpoint that is etcd's leader (None if none of them is, or no one says).

    One ``maintenance/status`` request to the current endpoint names the leader; if that is another
    member, the other endpoints are asked who they are (one to three cheap requests, no raft round).
    """
    current = transport.current()
    leader: str | None = None
    for index in [current, *(i for i in range(len(transport.endpoints)) if i != current)]:
        try:
            resp = transport.session.post(transport.api_url(index, "maintenance/status"), json={},
                                          timeout=transport.timeout)  # fmt: skip
            status = resp.json() if resp.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            continue
        if not isinstance(status, dict):
            continue
        leader = leader or status.get("leader")
        if leader is not None and status.get("header", {}).get("member_id") == leader:
            return index
    return None


class LeaderHint:
    """Where watch streams open: the endpoint that is etcd's leader, asked at most every ``ttl`` seconds
    for all the watches of a store family (a thousand watches starting at once ask once).

    The leader applies a commit first and answers the writer from there; a follower applies it one
    raft message later (docs/PERFORMANCE.md measures what that costs the last watcher). A stream that
    fails on the hinted endpoint makes the next one ask again.
    """

    def __init__(self, transport: Transport, ttl: float = 10.0) -> None:
        self.transport = transport
        self.ttl = ttl
        self._lock = threading.Lock()
        self._index: int | None = None
        self._asked = float("-inf")

    def index(self) -> int | None:
        with self._lock:
            if time.monotonic() - self._asked >= self.ttl:
                self._index = leader_index(self.transport)
                self._asked = time.monotonic()
            return self._index

    def failed(self, index: int) -> None:
        with self._lock:
            if self._index == index:
                self._asked = float("-inf")


def open_stream(
    transport: Transport, session: requests.Session, create: dict[str, Any], silence: float, leader: LeaderHint
) -> tuple[requests.Response, int]:
    """POST ``create`` (a ``create_request``) to the leader's watch if it is one of the endpoints, else
    the current endpoint's; the streaming answer and the endpoint's index. The session must carry the
    auth token (``transport.headers()``)."""
    hinted = leader.index()
    index = transport.current() if hinted is None else hinted
    try:
        resp = session.post(
            transport.api_url(index, "watch"),
            json={"create_request": create},
            stream=True,
            timeout=(transport.timeout, silence),
        )
    except requests.RequestException:
        leader.failed(index)
        raise
    if resp.status_code != 200:
        resp.close()
        transport.failed(index)
        leader.failed(index)
        raise Unanswered(f"watch refused with HTTP {resp.status_code}")
    return resp, index


def lines(resp: requests.Response) -> Iterator[bytes]:
    """The JSON messages of a watch stream, one per line, as they arrive.

    The gateway answers with HTTP/1.1 chunked framing and flushes one message per chunk. The
    chunks are read straight off the connection's buffered reader, where ``iter_content`` goes
    through five layers of requests and urllib3 generators per chunk (7 instead of 9.5 µs a
    message with its JSON on a warm core; a watcher woken every few ms runs cold, where fewer
    layers touched count for more: docs/PERFORMANCE.md). Anything but a plain chunked answer not
    yet read from (another urllib3, a compressed body) falls back to ``iter_content``. Raises
    :class:`Silent` after ``silence`` seconds without a byte; ends at EOF.
    """
    raw = resp.raw
    fp = getattr(getattr(raw, "_fp", None), "fp", None)
    if (
        fp is None
        or not getattr(raw, "chunked", False)
        or resp.headers.get("Content-Encoding", "identity") != "identity"
        or getattr(raw, "chunk_left", None) is not None
    ):
        yield from _split(resp.iter_content(chunk_size=None))
        return
    readline, read = fp.readline, fp.read
    buf = b""
    try:
        while True:
            size = readline(_MAX_CHUNK_LINE)
            if not size:
                return  # EOF
            n = int(size.split(b";", 1)[0], 16)
            if n == 0:
                return  # the last chunk
            data = read(n + 2)
            if len(data) != n + 2:
                return  # EOF inside a chunk
            if data[n:] != b"\r\n":
                raise ValueError("malformed chunk in the watch stream")
            if not buf and data.find(b"\n") == n - 1:
                yield data[: n - 1]  # the usual chunk: exactly one message and its newline
                continue
            buf += data[:n]
            while (i := buf.find(b"\n")) >= 0:
                line, buf = buf[:i], buf[i + 1 :]
                if line.strip():
                    yield line
    except TimeoutError:
        raise Silent() from None


def _split(chunks: Iterable[bytes]) -> Iterator[bytes]:
    buf = b""
    try:
        for chunk in chunks:
            buf += chunk
            while (i := buf.find(b"\n")) >= 0:
                line, buf = buf[:i], buf[i + 1 :]
                if line.strip():
                    yield line
    except requests.ConnectionError as e:
        if "Read timed out" in str(e):
            raise Silent() from None
        raise


def event_view(ev: dict[str, Any], records: Records) -> View:
    """The view one watch event of ``records``' ruleset key gives."""
    kv = ev["kv"]
    rev = Revision(int(kv["mod_revision"]))
    if ev.get("type") == "DELETE":
        return View(rev, None, f"{records.ruleset_key} was deleted at revision {rev}")
    return kv_view(kv, records)


def kv_view(kv: dict[str, Any], records: Records) -> View:
    rev = Revision(int(kv["mod_revision"]))
    try:
        return View(rev, records.snapshot(kv).ruleset)
    except InvalidRecordError as e:
        return View(rev, None, str(e))


def failure(msg: dict[str, Any], transport: Transport, index: int) -> NoReturn:
    """Raise for an ``{"error": ...}`` message (the member lost its leader, or another gateway error)."""
    transport.failed(index)
    error = msg["error"]
    raise Unanswered(f"watch error: {error.get('message', error) if isinstance(error, dict) else error}")


def watch_session(transport: Transport) -> requests.Session:
    session = transport.security.session()
    # Ends the stream with an error when the member loses its leader, instead of silence.
    session.headers["Grpc-Metadata-hasleader"] = "true"
    return session


class RulesetWatch:
    """Every committed ruleset, in revision order, surviving member death, compaction and silence.

    Without ``since`` the first view is the current ruleset (a linearizable read). With
    ``since`` every later revision is delivered if etcd still has it; if it was compacted,
    the watcher resyncs to the current ruleset. Silence longer than ``silence`` seconds
    re-verifies with a linearizable read (etcd 3.4 sends progress notifications only every
    10 minutes by default).
    """

    def __init__(
        self,
        transport: Transport,
        records: Records,
        since: Revision | None,
        silence: float,
        leader: LeaderHint | None = None,
    ) -> None:
        self.transport = transport
        self.records = records
        self.leader = leader or LeaderHint(transport)
        self.last: Revision | None = since
        self.silence = silence
        self._closed = threading.Event()
        self._resp: requests.Response | None = None
        self.session = watch_session(transport)

    def close(self) -> None:
        self._closed.set()
        resp = self._resp
        if resp is not None:
            shutdown(resp)

    def __iter__(self) -> Iterator[View]:
        backoff = 0.05
        while not self._closed.is_set():
            try:
                yield from self._one_stream()
                backoff = 0.05
            except Silent:
                self.transport.count("watch_silences")  # idle, or a paused member: re-verify
                continue
            except STREAM_ERRORS as e:
                if self._closed.is_set():
                    return
                if isinstance(e, requests.ReadTimeout):
                    self.transport.count("watch_silences")  # no answer to the watch itself: re-verify
                    continue
                log.info("watch on %s: %s; resyncing", self.transport.url(), short(str(e)))
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            self.transport.count("watch_resyncs")
            if self._closed.is_set():
                return

    def _one_stream(self) -> Iterator[View]:
        transport, records, key = self.transport, self.records, self.records.ruleset_key
        kvs, header = transport.range(key)  # linearizable: proves this member has quorum
        current = kv_view(kvs[0], records) if kvs else None
        if self.last is None:
            if current is not None:
                self.last = current.revision
                yield current
            start = header + 1
        else:
            start = self.last + 1
        self.session.headers.update(transport.headers())  # a token renewed by the read above
        create = {"key": b64(key), "start_revision": start, "progress_notify": True}
        resp, index = open_stream(transport, self.session, create, self.silence, self.leader)
        self._resp = resp
        try:
            for line in lines(resp):
                if self._closed.is_set():
                    return
                msg = json.loads(line)
                result = msg.get("result")
                if result is None:
                    failure(msg, transport, index)
                events = result.get("events")
                if not events:
                    if result.get("canceled") or result.get("compact_revision"):
                        # Our start revision is gone: jump to the current ruleset.
                        if current is not None and (self.last is None or current.revision > self.last):
                            self.last = current.revision
                            yield current
                        self.last = Revision(max(self.last or 0, header))
                        raise Unanswered(f"watch canceled (compacted at {result.get('compact_revision')})")
                    continue  # created, or a progress notification
                for ev in events:
                    rev = int(ev["kv"]["mod_revision"])
                    if self.last is not None and rev <= self.last:
                        continue  # a duplicate or going backwards: never deliver twice
                    view = event_view(ev, records)
                    self.last = view.revision
                    yield view
            transport.failed(index)
            raise Unanswered("watch stream ended")
        except (*STREAM_ERRORS, Silent):
            self.leader.failed(index)  # ask who leads before the next stream
            raise
        finally:
            self._resp = None
            resp.close()


def shutdown(resp: requests.Response) -> None:
    """Unblock a thread reading ``resp`` (closing alone does not interrupt a blocked read)."""
    try:
        fd = resp.raw._fp.fileno()  # type: ignore[union-attr]
        with socket.socket(fileno=socket.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError, ValueError):
        pass
    resp.close()
