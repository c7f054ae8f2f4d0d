"""Run the model check: ``python -m tests.model.check [--writes N] [--restarts N] ... [--weaken NAME]``.

Explores every interleaving of the model in :mod:`tests.model.protocol_model` up to the
bound, once per kind of change (add, remove, policy; "term": none, but an orchestrator
that dies between its term and its promotion; "steer": none, but hooks of an HA manager that
elects its own candidate, refused and steered), and prints the number of distinct
states, the depth and the time; with ``--weaken`` it prints the shortest counterexample.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from tests.model.protocol_model import WEAKENINGS, Bound, Checker

# The CI bound, per change: an add also has c streaming, so its orchestrators read once each. "term" has no
# change but an orchestrator that may die between its term and its promotion (a term whose primary never ran).
CI = {
    change: Bound(
        writes=1, changes=1, failovers=1, restarts=0, crashes=1, standby_crashes=1, reads=reads, change=change
    )
    for change, reads in (("add", 1), ("remove", 2), ("policy", 2))
} | {
    "term": Bound(
        writes=1, changes=0, failovers=1, restarts=0, crashes=1, standby_crashes=1, reads=2, change="none", abandons=1
    ),
    # Hooks of an HA manager that elects its own candidate (repmgr): the hook refuses any other and steers.
    "steer": Bound(
        writes=1, changes=0, failovers=1, restarts=0, crashes=1, standby_crashes=1, reads=2, change="none", steer=True
    ),
}
# Where a refused orchestrator lifting its fences under another's survey shows: two stale reads around an add.
LIFT = Bound(writes=1, changes=1, failovers=1, restarts=0, crashes=0, standby_crashes=0, reads=2, change="add")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("writes", "changes", "failovers", "restarts", "crashes", "standby_crashes", "reads", "abandons"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default: the CI bound's {name}")
    ap.add_argument("--change", choices=tuple(CI), action="append", help="default: all five")
    ap.add_argument("--weaken", choices=WEAKENINGS, action="append", default=[])
    args = ap.parse_args()
    failed = False
    for change in args.change or tuple(CI):
        given = {
            k: v
            for k, v in vars(args).items()
            if k in CI[change].__dataclass_fields__ and k != "change" and v is not None
        }
        bound = replace(CI[change], **given)
        result = Checker(bound, frozenset(args.weaken)).explore()
        print(f"{change}: {bound}\n  {result.show()}", flush=True)
        failed |= result.violation is not None
    return 1 if failed and not args.weaken else 0


if __name__ == "__main__":
    sys.exit(main())
