"""The sidecar's HTTP endpoints: thin handlers, one per path, each saying what it returns.

Read-only: GET only (any other method is 405), and nothing here changes the ruleset. It
listens on 127.0.0.1 unless ``sidecar.listen`` says otherwise; with ``sidecar.tls_cert`` it
serves HTTPS, and with ``sidecar.tls_client_ca`` it requires a client certificate.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgcohort.core import ruleset as core
from pgcohort.metrics import CONTENT_TYPE
from pgcohort.sidecar.loop import Sidecar


class Handler(BaseHTTPRequestHandler):
    sidecar: Sidecar  # set by serve()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = {"/health": self.get_health, "/ruleset": self.get_ruleset, "/metrics": self.get_metrics}
        handler = route.get(self.path.split("?")[0])
        if handler is None:
            self._send(404, {"error": f"no such path {self.path}; try /health, /ruleset or /metrics"})
            return
        handler()

    def _read_only(self) -> None:
        try:  # drain a small body first: closing with unread data resets the connection before the answer
            length = min(int(self.headers.get("Content-Length") or 0), 65536)
        except ValueError:
            length = 0
        if length > 0:
            self.rfile.read(length)
        self.close_connection = True
        self.send_response(405)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only  # http.server's naming

    def get_health(self) -> None:
        """200 when etcd is reachable and this node agrees with the committed ruleset; else 503 with why."""
        problems = self.sidecar.health_problems()
        state = self.sidecar.state
        body = {
            "member": self.sidecar.settings.name,
            "healthy": not problems,
            "problems": problems,
            "committed_revision": state.committed.revision if state.committed else None,
            "seen_revision": state.view.revision if state.view else None,
            "applied_revision": state.applied_revision,
            "fenced": bool(state.fenced),
        }
        self._send(200 if not problems else 503, body)

    def get_ruleset(self) -> None:
        """This node's view of the ruleset: the latest revision its watch delivered."""
        view = self.sidecar.state.view
        if view is None:
            self._send(503, {"error": "no ruleset seen yet"})
            return
        body: dict[str, Any] = {
            "member": self.sidecar.settings.name,
            "revision": view.revision,
            "problem": view.problem or None,
        }
        if view.ruleset is not None:
            rs = view.ruleset
            body |= {
                "version": rs.version,
                "phase": rs.phase,
                "rule": rs.show(),
                "cohort": [m.name for m in rs.rule.cohort],
                "previous_cohort": [m.name for m in rs.previous.cohort] if rs.previous else None,
                "record": core.to_record(rs),
            }
        self._send(200, body)

    def get_metrics(self) -> None:
        """Prometheus text exposition of this sidecar's metrics."""
        data = self.sidecar.metrics.exposition()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # scrapes and probes would flood the log


log = logging.getLogger("pgcohort.api")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the TLS handshake (a slow client never blocks accepting)."""
        if self.tls is not None:
            request.settimeout(5.0)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log.info("TLS handshake with %s failed: %s", client_address[0], e)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("HTTP request from %s failed", client_address[0], exc_info=True)


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve(sidecar: Sidecar, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"sidecar": sidecar})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("BoundServer", (_Server,), {"address_family": family, "tls": tls})
    server: ThreadingHTTPServer = server_class((host, port), handler)
    return server
