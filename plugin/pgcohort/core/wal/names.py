"""WAL segment file names and timeline history files (PostgreSQL's XLogFileName, readTimeLineHistory)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgcohort.core.wal.format import check_layout
from pgcohort.errors import WalError


def _segments_per_id(seg_size: int) -> int:
    check_layout(seg_size, 8192)
    return 0x100000000 // seg_size


def wal_file_name(tli: int, segno: int, seg_size: int = 16 << 20) -> str:
    """The name of segment ``segno`` of timeline ``tli`` (PostgreSQL's XLogFileName): '%08X%08X%08X'."""
    per_id = _segments_per_id(seg_size)
    if not 1 <= tli <= 0xFFFFFFFF or not 0 <= segno < (1 << 64) // seg_size:
        raise WalError(f"no WAL segment {segno} of timeline {tli} can exist")
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


_SEGMENT_NAME = re.compile(r"[0-9A-F]{24}")


def parse_wal_file_name(name: str, *, seg_size: int = 16 << 20) -> tuple[int, int] | None:
    """(timeline, segment number) of a WAL segment's file name; None for anything else.

    Only the 24 upper-case hexadecimal digits of a segment (PostgreSQL's IsXLogFileName):
    ``.history``, ``.partial`` and ``.backup`` files, ``archive_status`` and timeline 0 are None.
    The segment number depends on the segment size (XLogFromFileName); the timeline does not.
    """
    if not _SEGMENT_NAME.fullmatch(name) or name.startswith("00000000"):
        return None
    return int(name[:8], 16), int(name[8:16], 16) * _segments_per_id(seg_size) + int(name[16:], 16)


@dataclass(frozen=True)
class Switch:
    """Timeline ``tli`` was current until ``lsn``, where its child began (one line of a ``.history`` file)."""

    tli: int
    lsn: int


_HISTORY_LINE = re.compile(r"\s*(\d+)\s+([0-9A-Fa-f]+)/([0-9A-Fa-f]+)")


def parse_history(text: str) -> tuple[Switch, ...]:
    """The switches of a timeline history file (``NNNNNNNN.history``), oldest first.

    Each line is ``parentTLI<TAB>X/Y<TAB>reason``; blank lines and lines starting with '#'
    are skipped; anything after the switch point is ignored; timeline IDs must increase
    (PostgreSQL's readTimeLineHistory).
    """
    switches: list[Switch] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _HISTORY_LINE.match(line)
        if m is None:
            raise WalError(
                f"syntax error in a timeline history file: {line!r} (expected a timeline ID, a tab, and a "
                "switch point X/Y)"
            )
        tli, hi, lo = int(m[1]), int(m[2], 16), int(m[3], 16)
        if not 1 <= tli <= 0xFFFFFFFF or hi > 0xFFFFFFFF or lo > 0xFFFFFFFF:
            raise WalError(f"invalid data in a timeline history file: {line!r}")
        if switches and tli <= switches[-1].tli:
            raise WalError(f"invalid data in a timeline history file: {line!r} (timeline IDs must increase)")
        switches.append(Switch(tli, hi << 32 | lo))
    return tuple(switches)
