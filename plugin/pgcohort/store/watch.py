"""Watching the ruleset: our own loop, because etcd3gw's watch hangs forever on member death,
compaction and errors.

Each stream starts with a linearizable read (which also proves the member has quorum),
watches from the next revision with a read timeout, and on any error, EOF, silence or
cancellation resyncs from a linearizable read on the next endpoint. Views are delivered in
strictly increasing revision order and never twice.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import requests

from pgcohort.errors import InvalidRecordError, PgcohortError
from pgcohort.seams import Revision, View
from pgcohort.store.records import Records
from pgcohort.store.transport import NotSent, Transport, Unanswered, b64, short

log = logging.getLogger(__name__)


class RulesetWatch:
    """Every committed ruleset, in revision order, surviving member death, compaction and silence.

    Without ``since`` the first view is the current ruleset (a linearizable read). With
    ``since`` every later revision is delivered if etcd still has it; if it was compacted,
    the watcher resyncs to the current ruleset. Silence longer than ``silence`` seconds
    re-verifies with a linearizable read (etcd 3.4 sends progress notifications only every
    10 minutes by default).
    """

    def __init__(self, transport: Transport, records: Records, since: Revision | None, silence: float) -> None:
        self.transport = transport
        self.records = records
        self.last: Revision | None = since
        self.silence = silence
        self._closed = threading.Event()
        self._resp: requests.Response | None = None
        self.session = transport.security.session()
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
            except (requests.RequestException, ValueError, KeyError, NotSent, Unanswered, PgcohortError) as e:
                if self._closed.is_set():
                    return
                if "Read timed out" in str(e):
                    self.transport.count("watch_silences")  # idle, or a paused member: re-verify
                    continue
                log.info("watch on %s: %s; resyncing", self.transport.url(), short(str(e)))
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            self.transport.count("watch_resyncs")
            if self._closed.is_set():
                return

    def _view(self, kv: dict[str, Any]) -> View:
        rev = Revision(int(kv["mod_revision"]))
        try:
            return View(rev, self.records.snapshot(kv).ruleset)
        except InvalidRecordError as e:
            return View(rev, None, str(e))

    def _deliver(self, view: View) -> Iterator[View]:
        if self.last is not None and view.revision <= self.last:
            return  # a duplicate or going backwards: never deliver twice
        self.last = view.revision
        yield view

    def _one_stream(self) -> Iterator[View]:
        transport, key = self.transport, self.records.ruleset_key
        kvs, header = transport.range(key)  # linearizable: proves this member has quorum
        current = self._view(kvs[0]) if kvs else None
        if self.last is None:
            if current is not None:
                yield from self._deliver(current)
            start = header + 1
        else:
            start = self.last + 1
        self.session.headers.update(transport.headers())  # a token renewed by the read above
        index = transport.current()
        body = {"create_request": {"key": b64(key), "start_revision": start, "progress_notify": True}}
        resp = self.session.post(
            transport.api_url(index, "watch"), json=body, stream=True, timeout=(transport.timeout, self.silence)
        )
        self._resp = resp
        try:
            if resp.status_code != 200:
                transport.failed(index)
                raise Unanswered(f"watch refused with HTTP {resp.status_code}")
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
                        transport.failed(index)
                        raise Unanswered(f"watch error: {msg['error'].get('message', msg['error'])}")
                    result = msg["result"]
                    if result.get("canceled") or result.get("compact_revision"):
                        # Our start revision is gone: jump to the current ruleset.
                        if current is not None:
                            yield from self._deliver(current)
                        self.last = Revision(max(self.last or 0, header))
                        raise Unanswered(f"watch canceled (compacted at {result.get('compact_revision')})")
                    for ev in result.get("events", []):
                        kv = ev["kv"]
                        rev = Revision(int(kv["mod_revision"]))
                        if ev.get("type") == "DELETE":
                            yield from self._deliver(View(rev, None, f"{key} was deleted at revision {rev}"))
                        else:
                            yield from self._deliver(self._view(kv))
            transport.failed(index)
            raise Unanswered("watch stream ended")
        finally:
            self._resp = None
            resp.close()


def _shutdown(resp: requests.Response) -> None:
    """Unblock a thread reading ``resp`` (closing alone does not interrupt a blocked read)."""
    try:
        fd = resp.raw._fp.fileno()  # type: ignore[union-attr]
        with socket.socket(fileno=socket.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError, ValueError):
        pass
    resp.close()
