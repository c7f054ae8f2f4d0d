"""A TCP proxy in front of an etcd member, for tests of what etcd trouble does to the gate.

Each :class:`Proxy` listens on a free loopback port and forwards to one etcd member's client
port. Its mode says what happens to what clients send:

* ``pass``      forward at once;
* ``delay``     forward each chunk ``delay`` seconds late (a slow network);
* ``blackhole`` accept connections and forward nothing, ever (a stopped member, a partition);
* ``hold``      forward everything except an HTTP request that contains ``marker`` (a write
  of one key, say): that one is never forwarded, its connection hangs, and ``held`` is set
  (the moment to kill etcd's leader "mid-transaction").

Only the client's direction is shaped; answers come back as they are. Connections made
before a mode change keep pumping under the new mode. :class:`Proxies` is one per member of
an :class:`tests.servers.EtcdCluster`, with their endpoints.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

from tests.servers import EtcdCluster


@dataclass
class Proxy:
    upstream: tuple[str, int]
    mode: str = "pass"
    delay: float = 0.0
    marker: bytes = b""
    held: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    _sock: socket.socket | None = None
    _closed: threading.Event = field(default_factory=threading.Event)
    _drop: threading.Event = field(default_factory=threading.Event)  # set: every connection made so far ends
    _conns: list[socket.socket] = field(default_factory=list)

    def start(self) -> Proxy:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
        except OSError:
            client.close()
            return
        self._conns.append(server)
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
        self._pump(client, server, True)

    def _pump(self, src: socket.socket, dst: socket.socket, shaped: bool) -> None:
        drop = self._drop
        try:
            while not drop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if shaped and not self._forward(data):
                    drop.wait()  # never forwarded: the connection hangs until it is dropped
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def _forward(self, data: bytes) -> bool:
        """False if this chunk must never reach etcd; sleeps for a delay first."""
        if self.mode == "blackhole":
            return False
        if self.mode == "hold" and self.marker and self.marker in data:
            self.held.set()
            return False
        if self.mode == "delay":
            time.sleep(self.delay)
        return True

    def drop(self) -> None:
        """End every connection made so far (hanging ones included); new ones start fresh."""
        drop, self._drop = self._drop, threading.Event()
        conns, self._conns = self._conns, []
        drop.set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            self._sock.close()
        self.drop()


@dataclass
class Proxies:
    """One :class:`Proxy` per member of ``etcd``."""

    etcd: EtcdCluster
    proxies: list[Proxy] = field(default_factory=list)

    def start(self) -> Proxies:
        self.proxies = [Proxy(("127.0.0.1", m.client_port)).start() for m in self.etcd.members]
        return self

    @property
    def endpoints(self) -> list[str]:
        return [p.endpoint for p in self.proxies]

    def set(self, mode: str, *, delay: float = 0.0, marker: bytes = b"") -> None:
        for p in self.proxies:
            p.mode, p.delay, p.marker = mode, delay, marker
            p.held.clear()

    def held(self) -> bool:
        return any(p.held.is_set() for p in self.proxies)

    def reset(self) -> None:
        """Back to ``pass``; every connection made so far (a hanging one too) is dropped."""
        self.set("pass")
        for p in self.proxies:
            p.drop()

    def close(self) -> None:
        for p in self.proxies:
            p.close()
