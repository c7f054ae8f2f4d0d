"""Walking a timeline chain record by record to the end of valid WAL (see the package's docstring)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from pgcohort.core.wal.crc import crc32c
from pgcohort.core.wal.format import (
    LONG,
    LONG_PAGE_HEADER,
    PAGE,
    RECORD,
    RECORD_HEADER,
    RM_MAX_BUILTIN_ID,
    RM_MIN_CUSTOM_ID,
    RM_XLOG_ID,
    SHORT_PAGE_HEADER,
    U16,
    U32,
    XLOG_PAGE_MAGIC,
    XLOG_SWITCH,
    XLP_ALL_FLAGS,
    XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD,
    XLP_LONG_HEADER,
    XLR_INFO_MASK,
    check_layout,
    decodes,
)
from pgcohort.core.wal.names import Switch, wal_file_name
from pgcohort.errors import WalError

WalRead = Callable[[str, int, int], bytes]
"""(file name in pg_wal such as '000000010000000000000003', offset, length) -> the bytes there;
shorter at the end of the file; b'' if the file does not exist."""

_END_OF_TIME = 1 << 64
_READ_FIRST = 64 << 10  # the first read of a segment; each next one of the same file doubles, up to:
_READ_MAX = 4 << 20


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
        magic, info, tli, pageaddr, _ = PAGE.unpack_from(page)
        if magic != XLOG_PAGE_MAGIC or info & ~XLP_ALL_FLAGS:
            return False
        if info & XLP_LONG_HEADER:
            sysid, seg_size, page_size = LONG.unpack_from(page, SHORT_PAGE_HEADER)
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
        tot_len, _, xl_prev, _, rmid, _ = RECORD.unpack_from(buf, at)
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
            info = U16.unpack_from(page, 2)[0]
            header = LONG_PAGE_HEADER if info & XLP_LONG_HEADER else SHORT_PAGE_HEADER
            if offset == 0:
                rec_ptr += header
                offset = header
            elif offset < header:
                return None
            if info & XLP_FIRST_IS_CONTRECORD and offset == header:
                return None
            tot_len = U32.unpack_from(page, offset)[0]
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
                _, info, _, _, rem_len = PAGE.unpack_from(page)
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
        xl_info, rmid, xl_crc = rec[16], rec[17], U32.unpack_from(rec, 20)[0]
        if crc32c(rec[RECORD_HEADER:] + rec[:20]) ^ 0xFFFFFFFF != xl_crc:
            return None
        if rmid == RM_XLOG_ID and xl_info & ~XLR_INFO_MASK == XLOG_SWITCH:
            next_ptr = -(-next_ptr // self.seg_size) * self.seg_size
        if not decodes(rec, self.block_size):
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
    check_layout(seg_size, page_size)
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
    magic, info = PAGE.unpack_from(page)[:2]
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
