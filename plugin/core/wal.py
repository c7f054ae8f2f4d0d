"""PostgreSQL 15 write-ahead log: where the valid WAL a server holds ends.

Pure: the bytes are handed in by a callback (the PostgreSQL adapter reads them over SQL with
``pg_read_binary_file``); nothing here opens a file, and nothing keeps state between calls.

Why: a standby's ``pg_last_wal_receive_lsn()`` restarts at a segment boundary when it restarts,
and its replay position may lag far behind (``recovery_min_apply_delay``), so neither says
what it holds. What it holds is its **durable end of WAL**: the end of the last complete,
CRC-valid record in its ``pg_wal`` on its timeline, which is exactly where its own recovery
would stop reading if it were promoted. :func:`end_of_wal` walks the records from a known
record boundary (its replay position) to there, with the checks of PostgreSQL 15's
``xlogreader.c`` (``XLogDecodeNextRecord``, ``XLogReaderValidatePageHeader``,
``ValidXLogRecordHeader``, ``ValidXLogRecord``, ``DecodeXLogRecord``) and the page-timeline
check of recovery's ``ReadRecord`` (``tliInHistory``):

- **page header** (``XLogPageHeaderData``, 24 bytes; the first page of a segment has the
  40-byte ``XLogLongPageHeaderData``): ``xlp_magic`` is ``0xD110`` (PostgreSQL 15), no
  unknown ``xlp_info`` bits, a long header exactly on a segment's first page with the
  system identifier (of the first long header seen, or the one given), segment size and
  page size; ``xlp_pageaddr`` is the page's own address (a recycled segment fails here);
  ``xlp_tli`` never goes backwards and is on the timeline chain being read.
- **record header** (``XLogRecord``, 24 bytes, MAXALIGNed): ``xl_tot_len`` at least 24, a
  valid ``xl_rmid`` (built-in 0-21 or custom 128-255), ``xl_prev`` the previous record's
  start (for the first record walked only below its own address). A header may be split by
  a page boundary; a record may span pages and segments, each continuation page flagged
  ``XLP_FIRST_IS_CONTRECORD`` with ``xlp_rem_len`` what is left of it. A page flagged
  ``XLP_FIRST_IS_OVERWRITE_CONTRECORD`` replaces a record that was never completed (the
  walk restarts there, as PostgreSQL does).
- **CRC-32C** over the data after the header, then the header's first 20 bytes.
- **the fragment headers** (block references and main data) add up to ``xl_tot_len``.
- ``XLOG_SWITCH`` ends its segment: the next record starts on the next one.

Anything else ends the valid WAL: a zero length, a short page, a missing segment.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from pgcohort.errors import WalError

__all__ = [
    "Switch",
    "WalError",
    "WalRead",
    "crc32c",
    "end_of_wal",
    "parse_history",
    "parse_wal_file_name",
    "wal_file_name",
]

WalRead = Callable[[str, int, int], bytes]
"""(file name in pg_wal such as '000000010000000000000003', offset, length) -> the bytes there;
shorter at the end of the file; b'' if the file does not exist."""

# --- CRC-32C -------------------------------------------------------------------------------
#
# PostgreSQL's pg_crc32c is CRC-32C (Castagnoli): reflected polynomial 0x82F63B78. Instead of
# a table walk byte by byte (the interpreter's loop is the cost, ~10 MB/s), the message is
# turned into one integer and reduced modulo the polynomial with a few whole-integer shifts
# and XORs, which run in C: reflecting every byte (``bytes.translate``) makes the message
# an ordinary GF(2) polynomial M, and the running CRC of M from register ``crc`` is
# reflect32((reflect32(crc)·x^n + M·x^32) mod P). The reduction folds the top half H of
# V = H·x^k + L onto the bottom: V ≡ H·(x^k mod P) + L, one shift-and-XOR per set bit of
# the 32-bit constant x^k mod P (k is chosen near the middle, with few set bits), until 96
# bits are left; eight byte tables finish it.

_CRC_POLY = 0x11EDC6F41  # x^32 + x^28 + x^27 + ... + 1, the unreflected form of 0x82F63B78
_BITREV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_CRC_CHUNK = 64 << 10  # integers of this size are where the folding is fastest


def _mulmod(a: int, b: int) -> int:
    """a·b mod P for polynomials a, b of degree < 32."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a >> 32:
            a ^= _CRC_POLY
    return r


def _xpow(k: int) -> int:
    """x^k mod P."""
    r, base = 1, 2
    while k:
        if k & 1:
            r = _mulmod(r, base)
        base = _mulmod(base, base)
        k >>= 1
    return r


def _bits(c: int) -> tuple[int, ...]:
    return tuple(i for i in range(32) if c >> i & 1)


def _fold_at(target: int, window: int) -> tuple[int, tuple[int, ...]]:
    """The split point k in [target - window, target] whose x^k mod P has the fewest set bits, and those bits."""
    k = max(33, target - window)
    c = _xpow(k)
    best_k, best_c = k, c
    while k < target:
        k += 1
        c <<= 1
        if c >> 32:
            c ^= _CRC_POLY
        if c.bit_count() < best_c.bit_count():
            best_k, best_c = k, c
    return best_k, _bits(best_c)


def _small_folds() -> list[tuple[int, tuple[int, ...]]]:
    """For bit lengths up to 4,111 (records up to ~500 bytes, most of them), by eighths: (k, bits of x^k mod P)."""
    powers = [1]
    for _ in range(2068):
        c = powers[-1] << 1
        powers.append(c ^ _CRC_POLY if c >> 32 else c)
    folds: list[tuple[int, tuple[int, ...]]] = [(0, ())] * 12
    for q in range(12, 514):
        target = ((q << 3) + 32) // 2
        k = min(range(max(33, target - 16), target + 1), key=lambda k: powers[k].bit_count())
        folds.append((k, _bits(powers[k])))
    return folds


_FOLDS_SMALL = _small_folds()
_FOLDS_LARGE: dict[int, tuple[int, tuple[int, ...]]] = {}  # longer ones by 512ths, as they are met


def _reduce_table(shift: int) -> list[int]:
    """(i · x^(32 + shift)) mod P for every byte i."""
    unit = [_xpow(32 + shift + bit) for bit in range(8)]
    table = [0] * 256
    for i in range(1, 256):
        low = i & -i
        table[i] = table[i ^ low] ^ unit[low.bit_length() - 1]
    return table


_R0, _R1, _R2, _R3, _R4, _R5, _R6, _R7 = (_reduce_table(8 * q) for q in range(8))


def _crc32c_chunk(data: bytes, crc: int) -> int:
    n = len(data) << 3
    v = (int.from_bytes(crc.to_bytes(4, "little").translate(_BITREV), "big") << n) ^ (
        int.from_bytes(data.translate(_BITREV), "big") << 32
    )
    b = v.bit_length()
    while b > 4104:
        q = b >> 9
        fold = _FOLDS_LARGE.get(q)
        if fold is None:
            fold = _FOLDS_LARGE[q] = _fold_at(((q << 9) + 32) // 2, 64)
        k, bits = fold
        h = v >> k
        v &= (1 << k) - 1
        for s in bits:
            v ^= h << s
        b = v.bit_length()
    while b > 96:
        k, bits = _FOLDS_SMALL[b >> 3]
        h = v >> k
        v &= (1 << k) - 1
        for s in bits:
            v ^= h << s
        b = v.bit_length()
    if b > 32:
        v = (
            (v & 0xFFFFFFFF)
            ^ _R0[(v >> 32) & 255]
            ^ _R1[(v >> 40) & 255]
            ^ _R2[(v >> 48) & 255]
            ^ _R3[(v >> 56) & 255]
            ^ _R4[(v >> 64) & 255]
            ^ _R5[(v >> 72) & 255]
            ^ _R6[(v >> 80) & 255]
            ^ _R7[v >> 88]
        )
    return int.from_bytes(v.to_bytes(4, "big").translate(_BITREV), "little")


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The running CRC-32C of ``data`` from register ``crc``, not finalized (PostgreSQL's COMP_CRC32C).

    ``crc32c(b"123456789") ^ 0xFFFFFFFF == 0xE3069283``; ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
    """
    if not 0 <= crc <= 0xFFFFFFFF:
        raise ValueError(f"a CRC-32C register holds 32 bits, not {crc}")
    if len(data) <= _CRC_CHUNK:
        return _crc32c_chunk(bytes(data), crc)
    for at in range(0, len(data), _CRC_CHUNK):
        crc = _crc32c_chunk(bytes(data[at : at + _CRC_CHUNK]), crc)
    return crc


# --- file names and timeline history -----------------------------------------------------------


def _segments_per_id(seg_size: int) -> int:
    _check_layout(seg_size, 8192)
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


# --- the WAL format (PostgreSQL 15) -----------------------------------------------------------

XLOG_PAGE_MAGIC = 0xD110
XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
XLP_BKP_REMOVABLE = 0x0004
XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008
XLP_ALL_FLAGS = 0x000F
SHORT_PAGE_HEADER = 24  # MAXALIGN(sizeof(XLogPageHeaderData))
LONG_PAGE_HEADER = 40  # MAXALIGN(sizeof(XLogLongPageHeaderData))
RECORD_HEADER = 24  # SizeOfXLogRecord; xl_crc is its last 4 bytes
RM_MAX_BUILTIN_ID = 21  # RM_LOGICALMSG_ID, the last line of rmgrlist.h
RM_MIN_CUSTOM_ID = 128  # custom resource managers: 128..255
RM_XLOG_ID = 0
XLOG_SWITCH = 0x40
XLR_INFO_MASK = 0x0F
XLR_MAX_BLOCK_ID = 32
XLR_BLOCK_ID_DATA_SHORT = 255
XLR_BLOCK_ID_DATA_LONG = 254
XLR_BLOCK_ID_ORIGIN = 253
XLR_BLOCK_ID_TOPLEVEL_XID = 252
BKPBLOCK_HAS_IMAGE = 0x10
BKPBLOCK_HAS_DATA = 0x20
BKPBLOCK_SAME_REL = 0x80
BKPIMAGE_HAS_HOLE = 0x01
BKPIMAGE_COMPRESSED = 0x04 | 0x08 | 0x10  # pglz, lz4, zstd

_PAGE = struct.Struct("<HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len
_LONG = struct.Struct("<QII")  # xlp_sysid, xlp_seg_size, xlp_xlog_blcksz (after the short header)
_RECORD = struct.Struct("<IIQBBxxI")  # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, (padding), xl_crc
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_IMAGE = struct.Struct("<HHB")  # XLogRecordBlockImageHeader: length, hole_offset, bimg_info

_END_OF_TIME = 1 << 64
_READ_FIRST = 64 << 10  # the first read of a segment; each next one of the same file doubles, up to:
_READ_MAX = 4 << 20


def _check_layout(seg_size: int, page_size: int) -> None:
    """PostgreSQL's IsValidWalSegSize, and a WAL block size it can be built with."""
    if not (1 << 20 <= seg_size <= 1 << 30 and seg_size & (seg_size - 1) == 0):
        raise WalError(f"WAL segment size {seg_size} is not a power of two between 1 MB and 1 GB")
    if not (1 << 10 <= page_size <= 1 << 16 and page_size & (page_size - 1) == 0):
        raise WalError(f"WAL block size {page_size} is not a power of two between 1 kB and 64 kB")


def _decodes(rec: bytes, block_size: int) -> bool:
    """True if the fragment headers of a CRC-valid record add up to its length (PostgreSQL's DecodeXLogRecord)."""
    remaining = len(rec) - RECORD_HEADER
    at = RECORD_HEADER
    total = 0  # a uint32 in PostgreSQL: it wraps
    max_block_id = -1
    have_rel = False
    while remaining > total:
        block_id = rec[at]
        at += 1
        remaining -= 1
        if block_id == XLR_BLOCK_ID_DATA_SHORT:
            if remaining < 1:
                return False
            total = (total + rec[at]) & 0xFFFFFFFF
            remaining -= 1
            break
        if block_id == XLR_BLOCK_ID_DATA_LONG:
            if remaining < 4:
                return False
            total = (total + _U32.unpack_from(rec, at)[0]) & 0xFFFFFFFF
            remaining -= 4
            break
        if block_id == XLR_BLOCK_ID_ORIGIN:
            if remaining < 2:
                return False
            at += 2
            remaining -= 2
        elif block_id == XLR_BLOCK_ID_TOPLEVEL_XID:
            if remaining < 4:
                return False
            at += 4
            remaining -= 4
        elif block_id <= XLR_MAX_BLOCK_ID:
            if block_id <= max_block_id or remaining < 3:
                return False
            max_block_id = block_id
            fork_flags = rec[at]
            data_len = _U16.unpack_from(rec, at + 1)[0]
            at += 3
            remaining -= 3
            if bool(fork_flags & BKPBLOCK_HAS_DATA) != (data_len != 0):
                return False
            total = (total + data_len) & 0xFFFFFFFF
            if fork_flags & BKPBLOCK_HAS_IMAGE:
                if remaining < 5:
                    return False
                image_len, hole_offset, image_info = _IMAGE.unpack_from(rec, at)
                at += 5
                remaining -= 5
                compressed = image_info & BKPIMAGE_COMPRESSED
                has_hole = image_info & BKPIMAGE_HAS_HOLE
                if compressed:
                    hole_len = 0
                    if has_hole:
                        if remaining < 2:
                            return False
                        hole_len = _U16.unpack_from(rec, at)[0]
                        at += 2
                        remaining -= 2
                else:
                    hole_len = (block_size - image_len) & 0xFFFF
                total = (total + image_len) & 0xFFFFFFFF
                if has_hole and (hole_offset == 0 or hole_len == 0 or image_len == block_size):
                    return False
                if not has_hole and (hole_offset != 0 or hole_len != 0):
                    return False
                if compressed and image_len == block_size:
                    return False
                if not has_hole and not compressed and image_len != block_size:
                    return False
            if not fork_flags & BKPBLOCK_SAME_REL:
                if remaining < 12:
                    return False
                at += 12  # RelFileNode
                remaining -= 12
                have_rel = True
            elif not have_rel:
                return False
            if remaining < 4:
                return False
            at += 4  # BlockNumber
            remaining -= 4
        else:
            return False
    return remaining == total


class _Chain:
    """The bytes of a timeline chain, page by page, through the callback in growing reads.

    Each byte is read from the segment file of the timeline that owned it (the first in the
    chain whose switch point lies beyond it), or else from a later timeline's file of the
    same segment, which begins as a copy of its parent's up to the switch point.
    """

    def __init__(
        self, read: WalRead, files: Collection[str], chain: Sequence[tuple[int, int]], seg_size: int, page_size: int
    ) -> None:
        self.read = read
        self.files = files
        self.chain = chain  # (timeline, where it ended), oldest first; the last one never ends
        self.seg_size = seg_size
        self.page_size = page_size
        self.cached: dict[str, tuple[int, bytes, bool]] = {}  # file -> (offset, bytes, end of file reached)
        self.cached_segno = -1
        self.read_size = _READ_FIRST
        self.calls = 0

    def owner(self, lsn: int) -> int:
        """The index in the chain of the timeline that wrote ``lsn``."""
        for i, (_, end) in enumerate(self.chain):
            if lsn < end:
                return i
        return len(self.chain) - 1

    def page(self, addr: int, *, probe: bool = False) -> bytes | None:
        """The page at ``addr``; None if a file it needs is missing or ends before it."""
        end = addr + self.page_size
        segno, offset = divmod(addr, self.seg_size)
        if segno != self.cached_segno:
            self.cached.clear()
            self.cached_segno = segno
        i = self.owner(addr)
        if self.chain[i][1] >= end:
            return self._piece(i, segno, offset, self.page_size, probe)
        # A timeline switch inside this page: its bytes come from two files. If the newer timeline's
        # is not there, the page is cut at the switch point (zeros after it, where no record can be
        # read): the WAL before the switch is still held, as PostgreSQL would read it from the older file.
        parts = []
        lo = addr
        while lo < end:
            i = self.owner(lo)
            hi = min(end, self.chain[i][1])
            part = self._piece(i, segno, lo - addr + offset, hi - lo, probe)
            if part is None:
                if lo == addr:
                    return None
                parts.append(bytes(end - lo))
                break
            parts.append(part)
            lo = hi
        return b"".join(parts)

    def _piece(self, owner: int, segno: int, offset: int, length: int, probe: bool) -> bytes | None:
        for tli, _ in self.chain[owner:]:
            name = wal_file_name(tli, segno, self.seg_size)
            if name in self.files:
                return self._bytes(name, offset, length, probe)
        return None

    def _bytes(self, name: str, offset: int, length: int, probe: bool) -> bytes | None:
        hit = self.cached.get(name)
        if hit is not None:
            at, data, eof = hit
            if at <= offset and offset + length <= at + len(data):
                return data[offset - at : offset - at + length]
            if eof and at <= offset:
                return None
        if probe:
            want = length
        else:
            want = min(max(length, self.read_size), self.seg_size - offset)
            self.read_size = min(2 * self.read_size, _READ_MAX)
        data = bytes(self.read(name, offset, want))[:want]
        self.calls += 1
        if not probe or hit is None:
            self.cached[name] = (offset, data, len(data) < want)
        return data[:length] if len(data) >= length else None


class _Walk:
    """PostgreSQL's xlogreader over a :class:`_Chain`: one record at a time, each checked as it does."""

    def __init__(self, chain: _Chain, timelines: frozenset[int], system_id: int | None, block_size: int) -> None:
        self.chain = chain
        self.timelines = timelines
        self.system_id = system_id
        self.block_size = block_size
        self.seg_size = chain.seg_size
        self.page_size = chain.page_size
        self.latest_page = 0  # latestPagePtr / latestPageTLI
        self.latest_tli = 0
        self.segno = -1  # the segment read last (ws_segno)
        self.page_addr = -1  # the page read last, checked (readBuf)
        self.page_bytes = b""

    def valid_page(self, page: bytes, addr: int) -> bool:
        """XLogReaderValidatePageHeader."""
        magic, info, tli, pageaddr, _ = _PAGE.unpack_from(page)
        if magic != XLOG_PAGE_MAGIC or info & ~XLP_ALL_FLAGS:
            return False
        if info & XLP_LONG_HEADER:
            sysid, seg_size, page_size = _LONG.unpack_from(page, SHORT_PAGE_HEADER)
            if self.system_id is None:
                self.system_id = sysid
            if sysid != self.system_id or seg_size != self.seg_size or page_size != self.page_size:
                return False
        elif addr % self.seg_size == 0:
            return False
        if pageaddr != addr:
            return False
        if addr > self.latest_page and tli < self.latest_tli:
            return False
        self.latest_page = addr
        self.latest_tli = tli
        return True

    def page(self, addr: int) -> bytes | None:
        """ReadPageInternal: the checked page at ``addr``; entering a segment checks its first page too."""
        if addr == self.page_addr:
            return self.page_bytes
        segno, offset = divmod(addr, self.seg_size)
        if segno != self.segno and offset:
            first = self.chain.page(addr - offset, probe=True)
            if first is None or not self.valid_page(first, addr - offset):
                return None
        page = self.chain.page(addr)
        if page is None or not self.valid_page(page, addr):
            return None
        self.segno = segno
        self.page_addr = addr
        self.page_bytes = page
        return page

    def header_ok(self, buf: bytes, at: int, rec_ptr: int, prev: int | None) -> bool:
        """ValidXLogRecordHeader."""
        tot_len: int
        xl_prev: int
        tot_len, _, xl_prev, _, rmid, _ = _RECORD.unpack_from(buf, at)
        if tot_len < RECORD_HEADER or RM_MAX_BUILTIN_ID < rmid < RM_MIN_CUSTOM_ID:
            return False
        return xl_prev < rec_ptr if prev is None else xl_prev == prev

    def record(self, rec_ptr: int, prev: int | None) -> tuple[int, int] | None:
        """XLogDecodeNextRecord: (where the record at ``rec_ptr`` starts, where the next one would); None if invalid.

        ``prev`` is the start of the record read before (None: this is the first, read at random).
        """
        page_size = self.page_size
        while True:
            offset = rec_ptr % page_size
            page_addr = rec_ptr - offset
            page = self.page(page_addr)
            if page is None:
                return None
            info = _U16.unpack_from(page, 2)[0]
            header = LONG_PAGE_HEADER if info & XLP_LONG_HEADER else SHORT_PAGE_HEADER
            if offset == 0:
                rec_ptr += header
                offset = header
            elif offset < header:
                return None
            if info & XLP_FIRST_IS_CONTRECORD and offset == header:
                return None
            tot_len = _U32.unpack_from(page, offset)[0]
            got_header = offset <= page_size - RECORD_HEADER
            if got_header:
                if not self.header_ok(page, offset, rec_ptr, prev):
                    return None
            elif tot_len < RECORD_HEADER:
                return None
            room = page_size - offset
            if tot_len <= room:
                rec = page[offset : offset + tot_len]
                next_ptr = rec_ptr + ((tot_len + 7) & ~7)
                break
            # The record goes on over the next pages.
            parts = [page[offset:]]
            got = room
            restart = False
            while got < tot_len:
                page_addr += page_size
                page = self.page(page_addr)
                if page is None:
                    return None
                _, info, _, _, rem_len = _PAGE.unpack_from(page)
                if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD:
                    rec_ptr = page_addr  # the rest was never written: what replaced it starts here
                    restart = True
                    break
                if not info & XLP_FIRST_IS_CONTRECORD or rem_len == 0 or tot_len != (rem_len + got) & 0xFFFFFFFF:
                    return None
                header = LONG_PAGE_HEADER if info & XLP_LONG_HEADER else SHORT_PAGE_HEADER
                n = min(page_size - header, rem_len)
                parts.append(page[header : header + n])
                got += n
                if not got_header:
                    if not self.header_ok(b"".join(parts), 0, rec_ptr, prev):
                        return None
                    got_header = True
            if restart:
                continue
            rec = b"".join(parts)
            next_ptr = page_addr + header + ((rem_len + 7) & ~7)
            break
        xl_info, rmid, xl_crc = rec[16], rec[17], _U32.unpack_from(rec, 20)[0]
        if crc32c(rec[RECORD_HEADER:] + rec[:20]) ^ 0xFFFFFFFF != xl_crc:
            return None
        if rmid == RM_XLOG_ID and xl_info & ~XLR_INFO_MASK == XLOG_SWITCH:
            next_ptr = -(-next_ptr // self.seg_size) * self.seg_size
        if not _decodes(rec, self.block_size):
            return None
        if self.latest_tli not in self.timelines:
            return None
        return rec_ptr, next_ptr


def end_of_wal(
    read: WalRead,
    files: Collection[str],
    start: int,
    timeline: int,
    history: Sequence[Switch],
    *,
    seg_size: int = 16 << 20,
    page_size: int = 8192,
    block_size: int = 8192,
    system_id: int | None = None,
) -> int:
    """Where the valid WAL from ``start`` on timeline ``timeline`` ends: the LSN just after its last valid record.

    ``start`` must be a record boundary (a replay position: the end of the record before, which
    may be the very start of a page or segment, where the record begins after the page header).
    ``history`` is the ancestry of ``timeline`` (its ``.history`` file, :func:`parse_history`);
    ``files`` are the names in pg_wal and ``read`` reads them (what it raises goes through).
    The result is the address where the next record would start: PostgreSQL's NextRecPtr after
    the last valid record, where its recovery would stop and a promotion would go on writing
    (pg_waldump's "invalid record length at X/Y" names it); ``start`` itself if the record
    there is not valid. ``block_size`` is the data page size (the setting ``block_size``, for
    full-page images); ``system_id``, if given, must be every long page header's
    (``pg_control_system()``), else the first one read is.

    Raises :class:`WalError` only when ``start``'s own page cannot be read (its segment file is
    missing or ends before it) or the arguments are nonsense: the caller then knows nothing.
    """
    _check_layout(seg_size, page_size)
    if seg_size % page_size or not 1 << 10 <= block_size <= 1 << 15 or block_size & (block_size - 1):
        raise WalError(f"a WAL segment of {seg_size} bytes in pages of {page_size} (data pages {block_size})")
    if not 1 <= timeline <= 0xFFFFFFFF:
        raise WalError(f"timeline {timeline} cannot exist")
    if not 0 < start < _END_OF_TIME or start % 8:
        raise WalError(f"{_lsn(start)} is not a record boundary (records start at a multiple of 8)")
    chain: list[tuple[int, int]] = []
    for switch in history:
        if chain and (switch.tli <= chain[-1][0] or switch.lsn < chain[-1][1]):
            raise WalError(f"timeline history {list(history)} is not in order")
        if not 1 <= switch.tli < timeline or not 0 <= switch.lsn < _END_OF_TIME:
            raise WalError(f"{switch} cannot be in the history of timeline {timeline}")
        chain.append((switch.tli, switch.lsn))
    chain.append((timeline, _END_OF_TIME))
    source = _Chain(read, frozenset(files), chain, seg_size, page_size)
    walk = _Walk(source, frozenset(t for t, _ in chain), system_id, block_size)
    page = source.page(start - start % page_size)
    if page is None:
        name = wal_file_name(chain[source.owner(start)][0], start // seg_size, seg_size)
        raise WalError(
            f"the page of {_lsn(start)} is not in pg_wal: segment {name} (or a later timeline's copy of it) "
            "is missing or ends before it"
        )
    magic, info = _PAGE.unpack_from(page)[:2]
    header = LONG_PAGE_HEADER if magic == XLOG_PAGE_MAGIC and info & XLP_LONG_HEADER else SHORT_PAGE_HEADER
    if 0 < start % page_size < header:
        raise WalError(f"{_lsn(start)} is inside a page header: not a record boundary")
    end = start
    prev: int | None = None
    while True:
        found = walk.record(end, prev)
        if found is None:
            return end
        prev, end = found


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
