"""The sidecar's HTTP endpoints: thin handlers, one per path, each saying what it returns."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgcohort.core import ruleset as core
from pgcohort.metrics import CONTENT_TYPE
from pgcohort.sidecar import Sidecar


class Handler(BaseHTTPRequestHandler):
    sidecar: Sidecar  # set by serve()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = {"/health": self.get_health, "/ruleset": self.get_ruleset, "/metrics": self.get_metrics}
        handler = route.get(self.path.split("?")[0])
        if handler is None:
            self._send(404, {"error": f"no such path {self.path}; try /health, /ruleset or /metrics"})
            return
        handler()

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


def serve(sidecar: Sidecar, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"sidecar": sidecar})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
