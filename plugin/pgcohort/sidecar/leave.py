"""Scale-down: ``pgcohort leave`` (and the sidecar's ``leave_on_stop``), and the sidecar's signals."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from pgcohort import protocol
from pgcohort.core import ruleset as core
from pgcohort.errors import TimedOutError
from pgcohort.seams import Snapshot, Store
from pgcohort.sidecar.loop import Sidecar


def leave(store: Store, name: str, *, timeout: float) -> str:
    """Remove ``name`` from the cohort through the protocol and wait until it is finalized.

    Returns what happened. The primary is never removed (switch over first); a node that is
    not a member only withdraws its record. TimedOutError if the finalize does not come in
    time (the removal stays committed; the node's record is kept).
    """
    snap, term = store.read_both()
    message = f"{name} is not a member; nothing to remove"
    if term.term.primary == name:
        message = f"{name} is the primary: not removed (switch over first, then remove it)"
    elif snap.ruleset.rule.member(name) is not None:
        if snap.ruleset.phase == "joint":
            _wait(store, lambda rs: rs.phase == "stable", timeout, "the change in progress to finish")
        done = protocol.propose(store, core.RemoveMember(name), actor=name)
        _wait(
            store,
            lambda rs: rs.phase == "stable" and rs.rule.member(name) is None,
            timeout,
            f"removal of {name} to be finalized (it is committed, version {done.snapshot.ruleset.version})",
        )
        message = f"removed {name} (version {done.snapshot.ruleset.version}) and the removal was finalized"
    store.registration(name, 1).withdraw()
    return message


def _wait(store: Store, done: Callable[[core.Ruleset], bool], timeout: float, what: str) -> Snapshot:
    deadline = time.monotonic() + timeout
    while True:
        snap = store.read()
        if done(snap.ruleset):
            return snap
        if time.monotonic() > deadline:
            raise TimedOutError(
                f"gave up waiting {timeout:g}s for {what}. Is the primary's sidecar running? `pgcohort status` "
                "shows the change in progress"
            )
        time.sleep(0.1)


def install_signal_handlers(sidecar: Sidecar, leaving: threading.Event) -> None:
    """SIGTERM stops the sidecar and marks ``leaving`` (acted on only with ``leave_on_stop``); SIGINT only stops."""

    def on_term(signum: int, frame: Any) -> None:
        leaving.set()
        sidecar.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, lambda s, f: sidecar.stop())
