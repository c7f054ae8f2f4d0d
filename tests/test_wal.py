"""The WAL reader (:mod:`pgcohort.core.wal`): unit tests, a synthetic WAL written here, and real PostgreSQL 15 WAL.

Every end of WAL it finds is compared with what ``pg_waldump`` (PostgreSQL's own reader) finds
in the same files: on WAL written by a primary and received by streaming standbys (small rows,
full-page images plain and compressed, TOAST, records spanning pages and a segment boundary,
a header split by a page boundary, ``pg_switch_wal()``), across a timeline switch (the promoted
standby, and a standby that followed it), and on copies damaged the ways a crash or a recycled
segment leaves them.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from pgcohort.core import wal
from pgcohort.core.wal import Switch, WalError, crc32c, end_of_wal, parse_history, parse_wal_file_name, wal_file_name
from pgcohort.errors import PgcohortError, PostgresError
from tests.conftest import need
from tests.pg import PG_BIN, PgCluster, PgNode, as_postgres

WALDUMP = f"{PG_BIN}/pg_waldump"
PAGE = 8192
SEG = 16 << 20

# --- CRC-32C, names, history -----------------------------------------------------------------------

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _TABLE.append(_c)


def reference_crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The textbook byte-at-a-time CRC-32C, to check the fast one against (and to write the synthetic WAL)."""
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def test_crc32c_vectors() -> None:
    fin = 0xFFFFFFFF
    assert crc32c(b"123456789") ^ fin == 0xE3069283
    assert crc32c(b"") == 0xFFFFFFFF
    # RFC 3720 (iSCSI), B.4
    assert crc32c(bytes(32)) ^ fin == 0x8A9136AA
    assert crc32c(b"\xff" * 32) ^ fin == 0x62A8AB43
    assert crc32c(bytes(range(32))) ^ fin == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) ^ fin == 0x113FDB5C


def test_crc32c_matches_the_bytewise_one_at_every_length_and_runs_on() -> None:
    data = bytes((i * 7919 + (i >> 3) * 13) & 0xFF for i in range(300_000))
    for n in [*range(0, 700), 4096, 8192, 65535, 65536, 65537, 300_000]:
        for crc in (0xFFFFFFFF, 0, 0x12345678):
            assert crc32c(data[:n], crc) == reference_crc32c(data[:n], crc), (n, crc)
    assert crc32c(data[1000:], crc32c(data[:1000])) == crc32c(data)
    with pytest.raises(ValueError):
        crc32c(b"x", 1 << 32)


def test_crc32c_speed() -> None:
    data = bytes((i * 2654435761) >> 13 & 0xFF for i in range(16 << 20))
    t = time.perf_counter()
    crc32c(data)
    big = (16 << 20) / (time.perf_counter() - t) / 1e6
    small = [data[i : i + 80] for i in range(0, 80 * 20000, 80)]
    t = time.perf_counter()
    for piece in small:
        crc32c(piece)
    per_record = (time.perf_counter() - t) / len(small) * 1e6
    print(f"\ncrc32c: {big:.0f} MB/s over 16 MB, {per_record:.1f} us for an 80-byte record")


def test_wal_file_names() -> None:
    assert wal_file_name(1, 3, SEG) == "000000010000000000000003"
    assert wal_file_name(0x1A, 0x1FF, SEG) == "0000001A00000001000000FF"
    assert wal_file_name(2, 4097, 1 << 20) == "000000020000000100000001"
    assert wal_file_name(3, 5, 1 << 30) == "000000030000000100000001"
    assert parse_wal_file_name("0000001A00000001000000FF") == (0x1A, 0x1FF)
    assert parse_wal_file_name("000000020000000100000001", seg_size=1 << 20) == (2, 4097)
    for name in ("00000002.history", "000000010000000000000003.partial", "000000010000000000000002.00000028.backup",
                 "archive_status", "0000000100000000000000a3", "000000000000000000000003", "00000001000000000000000",
                 " 00000001000000000000003"):  # fmt: skip
        assert parse_wal_file_name(name) is None, name
    for tli, segno in ((1, 1), (7, 0x2FF), (0xFFFFFFFF, 12345)):
        assert parse_wal_file_name(wal_file_name(tli, segno)) == (tli, segno)
    with pytest.raises(WalError):
        wal_file_name(0, 3)
    with pytest.raises(WalError):
        wal_file_name(1, 3, 3 << 20)


def test_history() -> None:
    lines = ["# a comment", "1\t0/3000158\tno recovery target specified", "", "   ", '2\t1/A0000028\tat "x"', "5  2/FF"]
    text = "\n".join(lines) + "\n"
    assert parse_history(text) == (Switch(1, 0x3000158), Switch(2, 0x1A0000028), Switch(5, 0x2000000FF))
    assert parse_history("") == ()
    for bad in ("x\t0/1\n", "1\n", "1\t0-3000158\n", "2\t0/1\n1\t0/2\n", "1\t100000000/0\n", "0\t0/1\n"):
        with pytest.raises(WalError):
            parse_history(bad)


def test_wal_error_is_a_postgres_error() -> None:
    assert issubclass(WalError, PostgresError) and issubclass(WalError, PgcohortError)
    assert WalError.exit_code == PostgresError.exit_code == 9
    assert wal.WalError is WalError


# --- a synthetic WAL, written page by page the way PostgreSQL lays it out ---------------------------

SYSID = 7_300_000_000_000_000_001


def main_data(data: bytes) -> bytes:
    """The fragment headers and data of a record holding only main data."""
    if len(data) < 256:
        return bytes([255, len(data)]) + data
    return bytes([254]) + struct.pack("<I", len(data)) + data


@dataclass
class FakeWal:
    """Writes records into segment files held in memory, as XLogInsert and its page setup do."""

    tli: int = 1
    seg_size: int = 1 << 20
    page_size: int = PAGE
    sysid: int = SYSID
    pos: int = 1 << 20  # the next byte to write (the start of segment 1)
    prev: int = 0
    files: dict[str, bytearray] = field(default_factory=dict)
    calls: int = 0  # reads through the callback

    def where(self, addr: int) -> tuple[bytearray, int]:
        name = wal_file_name(self.tli, addr // self.seg_size, self.seg_size)
        if name not in self.files:
            self.files[name] = bytearray(self.seg_size)
        return self.files[name], addr % self.seg_size

    def page_header(self, addr: int, info: int, rem_len: int) -> int:
        buf, off = self.where(addr)
        long = addr % self.seg_size == 0
        struct.pack_into("<HHIQI", buf, off, 0xD110, info | (2 if long else 0), self.tli, addr, rem_len)
        if long:
            struct.pack_into("<QII", buf, off + 24, self.sysid, self.seg_size, self.page_size)
            return 40
        return 24

    def raw(self, record: bytes) -> tuple[int, int]:
        """Lay ``record`` down at the insert position; (its start, where the next one starts)."""
        if self.pos % self.page_size == 0:
            self.pos += self.page_header(self.pos, 0, 0)
        start = self.pos
        done = 0
        while done < len(record):
            if self.pos % self.page_size == 0:
                self.pos += self.page_header(self.pos, 1, len(record) - done)
            n = min(len(record) - done, self.page_size - self.pos % self.page_size)
            buf, off = self.where(self.pos)
            buf[off : off + n] = record[done : done + n]
            done += n
            self.pos += n
        self.pos = (self.pos + 7) & ~7
        return start, self.pos

    def record(
        self, data: bytes = b"", *, rmid: int = 0, info: int = 0x20, prev: int | None = None, body: bytes | None = None
    ) -> tuple[int, int]:
        """An XLOG_NOOP (by default) holding ``data`` as main data; ``body``: the fragments as given."""
        payload = main_data(data) if body is None else body
        head = struct.pack("<IIQBBxx", 24 + len(payload), 0, self.prev if prev is None else prev, info, rmid)
        crc = reference_crc32c(payload + head) ^ 0xFFFFFFFF
        start, end = self.raw(head + struct.pack("<I", crc) + payload)
        self.prev = start
        return start, end

    def switch(self) -> tuple[int, int]:
        start, _ = self.record(info=0x40)
        self.pos = -(-self.pos // self.seg_size) * self.seg_size
        return start, self.pos

    def sized(self, end: int) -> tuple[int, int]:
        """A record that ends exactly at ``end`` (a multiple of 8 far enough ahead)."""
        headers = sum(
            40 if b % self.seg_size == 0 else 24
            for b in range(-(-self.pos // self.page_size) * self.page_size, end, self.page_size)
        )
        total = end - self.pos - headers
        assert total >= 32 and total % 8 == 0
        n = total - 24 - (2 if total - 26 < 256 else 5)
        done = self.record(b"s" * n)
        assert done[1] == end, (done, end)
        return done

    def read(self, name: str, offset: int, length: int) -> bytes:
        self.calls += 1
        return bytes(self.files[name][offset : offset + length]) if name in self.files else b""

    def end(self, start: int, *, timeline: int | None = None, history: tuple[Switch, ...] = ()) -> int:
        return end_of_wal(
            self.read, set(self.files), start, timeline or self.tli, history, seg_size=self.seg_size,
            page_size=self.page_size,
        )  # fmt: skip


def test_synthetic_records_of_every_shape() -> None:
    w = FakeWal()
    first, _ = w.record(b"first")
    ends = [w.record(bytes(n % 251 for n in range(size)))[1] for size in (0, 1, 7, 100, 255, 256, 3000, 9000, 40000)]
    assert w.end(first) == ends[-1]
    on_boundary = w.sized(-(-w.pos // PAGE) * PAGE + 2 * PAGE)  # ends exactly on a page boundary
    boundary = w.pos
    after_boundary = w.record(b"after a page boundary")
    w.sized(-(-w.pos // PAGE) * PAGE - 16)  # the next record's header is split by the page boundary
    split = w.record(b"split header" * 10)
    assert split[0] % PAGE == PAGE - 16
    w.sized(-(-w.pos // PAGE) * PAGE - 8)
    split8 = w.record(b"")
    assert split8[0] % PAGE == PAGE - 8
    custom = [w.record(b"custom", rmid=rmid) for rmid in (128, 200, 255)]
    across = w.record(b"x" * (w.seg_size - w.pos % w.seg_size + 20000))  # crosses into segment 2
    assert across[0] // w.seg_size == 1 and across[1] // w.seg_size == 2
    switch = w.switch()
    after_switch = w.record(b"after the switch")
    assert after_switch[0] == 3 * w.seg_size + 40 and switch[1] == 3 * w.seg_size
    last = w.record(b"last")
    for start in (first, boundary, after_boundary[0], split[0], split8[0], custom[0][0], across[0], switch[0],
                  switch[1], after_switch[0]):  # fmt: skip
        assert w.end(start) == last[1], hex(start)
    assert w.end(on_boundary[0]) == last[1]  # the record ending on the boundary
    assert w.end(last[1]) == last[1]  # nothing there: the end is where it starts
    big = FakeWal(pos=1 << 20)
    big.record(b"first")
    for _ in range(60):
        big.record(os.urandom(50_000))
    big.calls = 0
    assert big.end(big.seg_size + 40) == big.pos
    assert big.calls <= 8, big.calls  # few reads: each is an SQL round trip


def test_synthetic_damage_ends_the_walk_where_postgres_would() -> None:
    def build() -> tuple[FakeWal, list[tuple[int, int]]]:
        w = FakeWal()
        recs = [w.record(bytes([i]) * (i * 37 % 400)) for i in range(60)]
        recs.append(w.record(b"y" * 20000))  # spans three pages
        recs += [w.record(b"z" * 50) for _ in range(5)]
        return w, recs

    w, recs = build()
    start = recs[0][0]
    assert w.end(start) == recs[-1][1]

    def poke(w: FakeWal, addr: int, data: bytes) -> None:
        buf, off = w.where(addr)
        buf[off : off + len(data)] = data

    cases: list[tuple[str, Callable[[FakeWal], None], int]] = [
        ("a data byte flipped (CRC)", lambda w: poke(w, recs[30][0] + 30, b"\xee"), recs[29][1]),
        ("the CRC itself", lambda w: poke(w, recs[30][0] + 20, b"\0\0\0\0"), recs[29][1]),
        ("zero length", lambda w: poke(w, recs[40][0], bytes(4)), recs[39][1]),
        ("length below 24", lambda w: poke(w, recs[40][0], struct.pack("<I", 20)), recs[39][1]),
        ("rmid 22", lambda w: poke(w, recs[41][0] + 17, b"\x16"), recs[40][1]),
        ("rmid 127", lambda w: poke(w, recs[41][0] + 17, b"\x7f"), recs[40][1]),
        ("xl_prev wrong", lambda w: poke(w, recs[42][0] + 8, struct.pack("<Q", recs[40][0])), recs[41][1]),
        ("the page magic", lambda w: poke(w, recs[60][0] - recs[60][0] % PAGE + PAGE, b"\0\0"), recs[59][1]),
        ("unknown page flag", lambda w: poke(w, recs[60][0] - recs[60][0] % PAGE + PAGE + 2, b"\x11"), recs[59][1]),
        ("continuation flag missing", lambda w: poke(w, recs[60][0] - recs[60][0] % PAGE + PAGE + 2, b"\0"),
         recs[59][1]),
        ("xlp_rem_len wrong", lambda w: poke(w, recs[60][0] - recs[60][0] % PAGE + PAGE + 16, b"\x01"), recs[59][1]),
        ("xlp_pageaddr of a recycled segment",
         lambda w: poke(w, recs[60][0] - recs[60][0] % PAGE + PAGE + 8, struct.pack("<Q", 0x5000)), recs[59][1]),
        ("page timeline above the timeline", lambda w: poke(w, recs[60][0] - recs[60][0] % PAGE + PAGE + 4,
                                                            struct.pack("<I", 2)), recs[59][1]),
        ("the tail zeroed", lambda w: poke(w, recs[50][0], bytes(w.seg_size - recs[50][0] % w.seg_size)), recs[49][1]),
    ]  # fmt: skip
    for what, damage, expected in cases:
        w, _ = build()
        damage(w)
        assert w.end(start) == expected, what
    # the segment's first page is checked even when the walk starts later in it
    w, _ = build()
    poke(w, w.seg_size + 32, struct.pack("<I", 2 << 20))  # its xlp_seg_size is not the segment size
    assert w.end(recs[10][0]) == recs[10][0]
    w, _ = build()
    assert end_of_wal(w.read, set(w.files), start, 1, (), seg_size=w.seg_size, system_id=SYSID) == recs[-1][1]
    assert end_of_wal(w.read, set(w.files), start, 1, (), seg_size=w.seg_size, system_id=SYSID + 1) == start
    # a record whose fragment headers do not add up to its length, with a valid CRC
    for body in (bytes([255, 10]) + bytes(9), bytes([33]) + bytes(40), bytes([0, 0x20, 0, 0]) + bytes(20)):
        w = FakeWal()
        a = w.record(b"a")
        w.record(body=body)
        w.record(b"c")
        assert w.end(a[0]) == a[1], body
    # block references that decode: a full-page image with a hole, compressed ones, data, same-rel
    w = FakeWal()
    a = w.record(b"a")
    rel = bytes(12)
    plain = bytes([0, 0x10]) + b"\0\0" + struct.pack("<HHB", 8192, 0, 0x02) + rel + b"\0\0\0\0"
    holed = bytes([0, 0x10]) + b"\0\0" + struct.pack("<HHB", 1000, 500, 0x03) + rel + b"\0\0\0\0"
    packed = bytes([0, 0x30, 3, 0]) + struct.pack("<HHB", 300, 40, 0x05) + struct.pack("<H", 100) + rel + bytes(4)
    same = bytes([1, 0xA0, 2, 0]) + bytes(4)
    w.record(body=plain + bytes(8192))
    w.record(body=holed + bytes(1000))
    w.record(body=packed + same + bytes([253, 1, 0, 252, 9, 0, 0, 0, 255, 1]) + bytes(300 + 3 + 2) + b"m")
    last = w.record(b"z")
    assert w.end(a[0]) == last[1]
    for bad in (
        bytes([0, 0x10]) + b"\0\0" + struct.pack("<HHB", 1000, 0, 0x02) + rel + bytes(4) + bytes(1000),  # no hole
        bytes([0, 0x10]) + b"\0\0" + struct.pack("<HHB", 8192, 10, 0x02) + rel + bytes(4) + bytes(8192),
        bytes([0, 0x10]) + b"\0\0" + struct.pack("<HHB", 8192, 10, 0x04) + rel + bytes(4) + bytes(8192),
        bytes([0, 0x20, 0, 0]) + rel + bytes(4),  # HAS_DATA without data
        bytes([0, 0x80, 0, 0]) + bytes(4),  # SAME_REL first
        bytes([1, 0, 0, 0]) + rel + bytes(4) + bytes([0, 0, 0, 0]) + rel + bytes(4),  # block ids out of order
    ):
        w = FakeWal()
        a = w.record(b"a")
        w.record(body=bad)
        w.record(b"c")
        assert w.end(a[0]) == a[1], bad


def test_synthetic_edge_cases() -> None:
    # an aborted record: its continuation page was replaced by XLP_FIRST_IS_OVERWRITE_CONTRECORD
    w = FakeWal()
    a = w.record(b"a")
    b = w.record(b"b")
    w.sized(-(-w.pos // PAGE) * PAGE - 200)
    good = w.prev
    head = struct.pack("<IIQBBxx", 24 + 5 + 5000, 0, w.prev, 0x20, 0) + b"\0\0\0\0"
    buf, off = w.where(w.pos)
    buf[off : off + 200] = (head + bytes(176))[:200]  # the first 200 bytes of a record that was never finished
    w.pos += 200
    w.page_header(w.pos, 0x8, 0)  # XLP_FIRST_IS_OVERWRITE_CONTRECORD
    w.pos += 24
    w.prev = good
    w.record(b"overwrote the contrecord", info=0xD0)
    last = w.record(b"after")
    assert w.end(a[0]) == last[1] and w.end(b[1]) == last[1]
    # the first record walked only needs xl_prev below its own address; later ones the exact link
    w = FakeWal()
    a = w.record(b"a", prev=12345)
    last = w.record(b"b")
    assert w.end(a[0]) == last[1]
    w = FakeWal()
    a = w.record(b"a", prev=(1 << 20) + 40)  # not below itself
    w.record(b"b")
    assert w.end(a[0]) == a[0]
    # a page timeline that goes backwards
    w = FakeWal(tli=3)
    a = w.record(b"a")
    w.record(b"x" * 9000)
    buf, off = w.where((1 << 20) + PAGE)
    struct.pack_into("<I", buf, off + 4, 2)
    assert w.end(a[0], history=(Switch(1, 1 << 19), Switch(2, 1 << 19))) == a[1]
    # a record whose page header says XLP_FIRST_IS_CONTRECORD where a record should begin
    w = FakeWal()
    w.record(b"a")
    w.sized(-(-w.pos // PAGE) * PAGE)
    boundary = w.pos
    w.record(b"b")
    buf, off = w.where(boundary)
    struct.pack_into("<H", buf, off + 2, 1)
    assert w.end(boundary) == boundary
    # nonsense arguments and an unreadable start
    w = FakeWal()
    a = w.record(b"a")
    for bad_start in (a[0] + 4, (1 << 20) + 8, (1 << 20) + PAGE + 8, 0):
        with pytest.raises(WalError):
            w.end(bad_start)
    with pytest.raises(WalError):
        w.end(3 << 20)  # segment 3 is not there
    with pytest.raises(WalError):
        w.end((1 << 20) - 8)  # segment 0 is not there either
    with pytest.raises(WalError):
        end_of_wal(w.read, set(w.files), a[0], 1, (), seg_size=3 << 20)
    with pytest.raises(WalError):
        end_of_wal(w.read, set(w.files), a[0], 1, (), page_size=1000)
    with pytest.raises(WalError):
        end_of_wal(w.read, set(w.files), a[0], 2, (Switch(2, 5),))
    with pytest.raises(WalError):
        end_of_wal(w.read, set(w.files), a[0], 3, (Switch(1, 9), Switch(2, 5)))
    assert w.end(a[1]) == a[1]  # the page is there, the record is not
    short = FakeWal()
    a = short.record(b"a")
    short.files[wal_file_name(1, 1, short.seg_size)] = short.files[wal_file_name(1, 1, short.seg_size)][:4000]
    with pytest.raises(WalError):
        short.end(a[0])  # its page is cut short: nothing is known


def test_synthetic_timeline_chain() -> None:
    """Timeline 1 until a switch in the middle of a page of segment 2; timeline 2 from there, in its own files."""
    old = FakeWal(tli=1)
    first = old.record(b"one")
    for _ in range(40):
        old.record(os.urandom(30000))
    for _ in range(20):
        old.record(b"small" * 20)
    switch_point, fork_prev = old.pos, old.prev
    assert switch_point // old.seg_size == 2 and switch_point % PAGE > 100
    beyond = old.record(b"written on timeline 1 after the fork: not on timeline 2")
    assert beyond[0] == switch_point
    new = FakeWal(tli=2, pos=switch_point, prev=fork_prev)
    # timeline 2's first segment starts as a copy of timeline 1's up to the switch point
    seg2 = wal_file_name(1, 2, old.seg_size)
    copied = old.files[seg2][: switch_point % old.seg_size]
    new.files[wal_file_name(2, 2, old.seg_size)] = copied + bytearray(old.seg_size - len(copied))
    for _ in range(5):
        new.record(os.urandom(20000))
    last = new.record(b"last on timeline 2")
    history = (Switch(1, switch_point),)

    def end(files: dict[str, bytearray], start: int) -> int:
        def read(name: str, offset: int, length: int) -> bytes:
            return bytes(files[name][offset : offset + length]) if name in files else b""

        return end_of_wal(read, set(files), start, 2, history, seg_size=old.seg_size)

    both = {**old.files, **new.files}
    assert end(both, first[0]) == last[1]  # timeline 1's files, then timeline 2's (the old one has more after the fork)
    assert end(both, switch_point) == last[1]
    promoted = dict(both)
    del promoted[seg2]  # the promoted server renames it to .partial: timeline 2's copy is read instead
    assert end(promoted, first[0]) == last[1]
    # without timeline 2's files the walk reads timeline 1 up to the switch point and no further
    assert end(old.files, first[0]) == switch_point
    # read as timeline 1 (no history) it goes on into what timeline 2 does not have
    assert end_of_wal(old.read, set(old.files), first[0], 1, (), seg_size=old.seg_size) == beyond[1]
    # a switch point inside a page: timeline 1's bytes before it, timeline 2's after it (here they differ)
    mixed = dict(both)
    tampered = bytearray(mixed[wal_file_name(2, 2, old.seg_size)])
    tampered[switch_point % old.seg_size - 64 : switch_point % old.seg_size] = bytes(64)
    mixed[wal_file_name(2, 2, old.seg_size)] = tampered
    assert end(mixed, first[0]) == last[1]


def test_synthetic_parse_speed_of_small_records() -> None:
    w = FakeWal(seg_size=1 << 24)
    w.pos = 1 << 24
    first = w.record(b"first")
    payload = bytes(range(50))
    for _ in range(20_000):
        w.record(payload)
    t = time.perf_counter()
    assert w.end(first[0]) == w.pos
    took = time.perf_counter() - t
    size = w.pos - first[0]
    print(f"\nend_of_wal: 20,001 records of 80 bytes ({size / 1e6:.1f} MB) in {took:.2f} s: {size / took / 1e6:.1f} MB/s, "
          f"{20_001 / took:,.0f} records/s, {w.calls} reads")  # fmt: skip


# --- pg_waldump -----------------------------------------------------------------------------------

_RECORD_LINE = re.compile(
    r"rmgr: (\S+)\s+len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*\d+, lsn: ([0-9A-F]+)/([0-9A-F]+), "
    r"prev ([0-9A-F]+)/([0-9A-F]+), desc: (\S*)"
)
_ERROR_AT = re.compile(
    r"(?:invalid record length at|incorrect resource manager data checksum in record at|"
    r"record with incorrect prev-link \S+ at|invalid resource manager ID \d+ at|contrecord is requested by) "
    r"([0-9A-F]+)/([0-9A-F]+)"
)


@dataclass(frozen=True)
class Rec:
    lsn: int
    tot_len: int
    switch: bool
    end: int


def record_end(lsn: int, tot_len: int, switch: bool, seg_size: int = SEG, page_size: int = PAGE) -> int:
    """Where the next record starts: ``tot_len`` bytes laid from ``lsn`` over page headers, MAXALIGNed."""
    pos, left = lsn, tot_len
    while left > page_size - pos % page_size:
        left -= page_size - pos % page_size
        pos += page_size - pos % page_size
        pos += 40 if pos % seg_size == 0 else 24
    end = (pos + left + 7) & ~7
    return -(-end // seg_size) * seg_size if switch else end


@dataclass(frozen=True)
class Dump:
    records: list[Rec]
    error: str
    text: str

    def end(self, start: int) -> int:
        """pg_waldump's end of valid WAL: just after the last record it printed (``start`` if none)."""
        return self.records[-1].end if self.records else start


def waldump(
    directory: str, tli: int, start: int, seg_size: int = SEG, page_size: int = PAGE, *, blocks: bool = False
) -> Dump:
    """pg_waldump from ``start`` on timeline ``tli`` (``blocks``: with the details of block references)."""
    done = subprocess.run(
        [WALDUMP, "-p", directory, "-t", str(tli), "-s", f"{start >> 32:X}/{start & 0xFFFFFFFF:X}"]
        + (["--bkp-details"] if blocks else []),
        capture_output=True,
        text=True,
        timeout=120,
    )
    records = []
    for line in done.stdout.splitlines():
        m = _RECORD_LINE.match(line)
        if m:
            lsn = int(m[3], 16) << 32 | int(m[4], 16)
            switch = m[1] == "XLOG" and m[7] == "SWITCH"
            records.append(Rec(lsn, int(m[2]), switch, record_end(lsn, int(m[2]), switch, seg_size, page_size)))
    dump = Dump(records, done.stderr.strip(), done.stdout)
    assert "error" in dump.error, dump.error  # it always stops on something
    at = _ERROR_AT.search(dump.error)
    if at and records:  # the LSN of a record-level complaint is the end (or the end past a page header)
        lsn = int(at[1], 16) << 32 | int(at[2], 16)
        assert lsn - dump.end(start) in (0, 24, 40), (dump.error, hex(dump.end(start)))
    return dump


def files_reader(directory: str) -> tuple[Callable[[str, int, int], bytes], list[int]]:
    """The callback the adapter would be, over files read as root; and a count of its calls."""
    calls = [0]

    def read(name: str, offset: int, length: int) -> bytes:
        calls[0] += 1
        try:
            with open(os.path.join(directory, name), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""

    return read, calls


def ours(directory: str, start: int, timeline: int, history: tuple[Switch, ...] = ()) -> int:
    read, _ = files_reader(directory)
    return end_of_wal(read, os.listdir(directory), start, timeline, history)


def test_synthetic_wal_as_pg_waldump_reads_it() -> None:
    """The synthetic WAL's edge cases, read by PostgreSQL's own reader too (no server needed)."""
    need(WALDUMP, "pg_waldump (PostgreSQL 15)")
    root = tempfile.mkdtemp(prefix="pgcohort-wal-")
    try:
        w = FakeWal()
        first = w.record(b"first")
        w.record(b"x" * 20000)
        w.sized(-(-w.pos // PAGE) * PAGE + PAGE)
        boundary = w.pos
        w.sized(w.pos + 2 * PAGE - 16)
        split = w.record(b"split" * 30)
        w.record(b"custom rmgr", rmid=128)
        w.record(b"y" * (w.seg_size - w.pos % w.seg_size + 3000))
        switch = w.switch()
        w.record(b"after the switch")
        tail = w.record(b"z" * 100)
        # an aborted record overwritten on the next page
        w.sized(-(-w.pos // PAGE) * PAGE - 104)
        good = w.prev
        buf, off = w.where(w.pos)
        buf[off : off + 104] = struct.pack("<IIQBBxx", 5000, 0, good, 0x20, 0) + bytes(84)
        w.pos += 104
        w.page_header(w.pos, 0x8, 0)
        w.pos += 24
        w.prev = good
        w.record(b"overwrote it")
        last = w.record(b"last")
        for name, data in w.files.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        for start in (first[0], boundary, split[0], switch[0], switch[1], tail[0], last[0], last[1]):
            expected = waldump(root, 1, start, w.seg_size).end(start)
            assert w.end(start) == expected == last[1], hex(start)
    finally:
        shutil.rmtree(root)


# --- real WAL from PostgreSQL 15 ------------------------------------------------------------------


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def _one(conn: psycopg.Connection[tuple[object, ...]], query: str, *args: object) -> object:
    row = conn.execute(query, args or None).fetchone()
    assert row is not None
    return row[0]


def _insert_lsn(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    return _lsn(str(_one(conn, "SELECT pg_current_wal_insert_lsn()")))


def _bytes_to(lsn: int, end: int) -> int:
    """How many record bytes fit from ``lsn`` to ``end`` (the page headers in between take the rest)."""
    headers = sum(40 if b % SEG == 0 else 24 for b in range(-(-lsn // PAGE) * PAGE, end, PAGE))
    return end - lsn - headers


def _message_ending_at(conn: psycopg.Connection[tuple[object, ...]], pick: Callable[[int], int]) -> tuple[int, int]:
    """A logical message record placed to end exactly at ``pick(insert position)``; (its start, its end)."""
    for _ in range(5):
        lsn = _insert_lsn(conn)
        end = pick(lsn)
        # XLogRecord (24) + XLogRecordDataHeaderLong (5) + xl_logical_message (24) + 'w\0' + the message
        size = _bytes_to(lsn, end) - 24 - 5 - 24 - 2
        assert size >= 256
        conn.execute("SELECT pg_logical_emit_message(false, 'w', repeat('e', %s::int))", (size,))
        after = _insert_lsn(conn)
        if after in (end, end + 24, end + 40):  # nothing else was written in between
            return lsn, end
    raise AssertionError("other WAL kept landing between the placed records")


@dataclass
class RealWal:
    """Copies of pg_wal made with the servers stopped, and what was placed in them."""

    root: str
    tli1: str  # a standby's pg_wal on timeline 1
    primary: str  # the primary's
    promoted: str  # the standby promoted to timeline 2
    follower: str  # a standby that followed it onto timeline 2
    switch_point: int = 0
    page_end: int = 0  # a record ends exactly on a page boundary here
    split_header: int = 0  # a record starting 16 bytes before a page boundary
    segment_start: int = 0  # the record after pg_switch_wal() starts on this segment's first page
    across_segment: tuple[int, int] = (0, 0)  # a record spanning a segment boundary
    history: tuple[Switch, ...] = ()


def _write_timeline_1(conn: psycopg.Connection[tuple[object, ...]], wal_info: RealWal) -> None:
    conn.execute("CREATE TABLE small (id int PRIMARY KEY, v text)")
    for i in range(20):
        conn.execute(
            "INSERT INTO small SELECT g, 'row ' || g FROM generate_series(%s::int, %s::int) g",
            (i * 100 + 1, i * 100 + 100),
        )
    conn.execute("CHECKPOINT")
    conn.execute("UPDATE small SET v = v || '!' WHERE id % 7 = 0")  # full-page images with a hole
    conn.execute("ALTER SYSTEM SET wal_compression = 'pglz'")
    conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.2)
    conn.execute("CHECKPOINT")
    conn.execute("UPDATE small SET v = v || '?' WHERE id % 5 = 0")  # compressed full-page images
    conn.execute("ALTER SYSTEM RESET wal_compression")
    conn.execute("SELECT pg_reload_conf()")
    conn.execute("CREATE TABLE big (id int, v text)")
    conn.execute("ALTER TABLE big ALTER v SET STORAGE EXTERNAL")
    conn.execute(
        "INSERT INTO big SELECT g, (SELECT string_agg(md5(g::text || '.' || i::text), '') FROM generate_series(1, 600) i)"
        " FROM generate_series(1, 12) g"
    )  # TOAST chunks of ~2 kB: records across page boundaries
    conn.execute("SELECT pg_logical_emit_message(false, 'w', repeat('m', 100000))")  # one record over 13 pages
    wal_info.page_end = _message_ending_at(conn, lambda lsn: -(-(lsn + 2000) // PAGE) * PAGE)[1]
    while wal_info.split_header % PAGE != PAGE - 16:  # unless other WAL landed between the two
        _message_ending_at(conn, lambda lsn: -(-(lsn + 2000) // PAGE) * PAGE - 16)
        wal_info.split_header = _message_ending_at(conn, lambda lsn: lsn + 1000)[0]
    # fill up to the segment's end with large messages, then one across the boundary
    while SEG - _insert_lsn(conn) % SEG > 2_500_000:
        conn.execute("SELECT pg_logical_emit_message(false, 'w', repeat('f', 2000000))")
    seg_end = -(-_insert_lsn(conn) // SEG) * SEG
    wal_info.across_segment = _message_ending_at(conn, lambda lsn: seg_end + 30000)
    conn.execute("INSERT INTO small SELECT g, 'late ' || g FROM generate_series(3001, 3300) g")
    switched = _lsn(str(_one(conn, "SELECT pg_switch_wal()")))  # the end of its XLOG_SWITCH record
    wal_info.segment_start = -(-switched // SEG) * SEG
    conn.execute("INSERT INTO small SELECT g, 'after the switch ' || g FROM generate_series(5001, 5200) g")


def _wait_replayed(node: PgNode, lsn: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        while _lsn(str(_one(conn, "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')"))) < lsn:
            assert time.monotonic() < deadline, f"{node.name} did not replay up to {lsn:X}"
            time.sleep(0.1)


def _checkpoint_location(node: PgNode) -> int:
    out = as_postgres([f"{PG_BIN}/pg_controldata", "-D", node.data_dir]).stdout
    m = re.search(r"Latest checkpoint location:\s+(\S+)", out)
    assert m is not None, out
    return _lsn(m[1])


def _copy_wal(node: PgNode, dest: str) -> str:
    shutil.copytree(os.path.join(node.data_dir, "pg_wal"), dest, ignore=shutil.ignore_patterns("archive_status"))
    return dest


@pytest.fixture(scope="module")
def real_wal() -> Iterator[RealWal]:
    """A primary's WAL on two standbys; one promoted (timeline 2), the other following it; pg_wal copies of each."""
    need(f"{PG_BIN}/postgres", "PostgreSQL 15 server")
    need(WALDUMP, "pg_waldump (PostgreSQL 15)")
    cluster = PgCluster()
    root = tempfile.mkdtemp(prefix="pgcohort-walcopy-")
    try:
        pg0 = cluster.init_primary("pg0")
        with psycopg.connect(pg0.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET full_page_writes = on")  # the suite turns them off for speed
            conn.execute("SELECT pg_reload_conf()")
        pg1 = cluster.add_standby("pg1", "pg0")
        pg2 = cluster.add_standby("pg2", "pg0")
        tli1, primary, promoted, follower = (os.path.join(root, n) for n in ("tli1", "primary", "promoted", "follower"))
        info = RealWal(root, tli1, primary, promoted, follower)
        with psycopg.connect(pg0.dsn, autocommit=True) as conn:
            _write_timeline_1(conn, info)
        cluster.stop(pg0)  # a clean shutdown sends everything, its checkpoint included, to both standbys
        done = _checkpoint_location(pg0) + 1
        _wait_replayed(pg1, done)
        _wait_replayed(pg2, done)
        cluster.stop(pg1)
        _copy_wal(pg0, info.primary)
        _copy_wal(pg1, info.tli1)
        cluster.start(pg1)
        with psycopg.connect(pg1.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_promote(true, 30)")
            conn.execute("INSERT INTO small SELECT g, 'timeline 2 ' || g FROM generate_series(10001, 10300) g")
            conn.execute("SELECT pg_logical_emit_message(false, 'w', repeat('t', 300000))")
        cluster.stop(pg2)
        cluster.follow(pg2, "pg1")
        cluster.start(pg2)
        with psycopg.connect(pg1.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("INSERT INTO small SELECT g, 'followed ' || g FROM generate_series(20001, 20200) g")
            raw = _one(conn, "SELECT pg_read_binary_file('pg_wal/00000002.history')")
        assert isinstance(raw, bytes)
        history = parse_history(raw.decode())
        info.history = history
        info.switch_point = history[-1].lsn
        cluster.stop(pg1)
        _wait_replayed(pg2, _checkpoint_location(pg1) + 1)
        cluster.stop(pg2)
        _copy_wal(pg1, info.promoted)
        _copy_wal(pg2, info.follower)
        yield info
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def _segments(directory: str) -> dict[int, list[int]]:
    """segment number -> the timelines that have it."""
    out: dict[int, list[int]] = {}
    for name in os.listdir(directory):
        parsed = parse_wal_file_name(name)
        if parsed:
            out.setdefault(parsed[1], []).append(parsed[0])
    return out


def _first_lsn(directory: str) -> int:
    """The start of the oldest segment in the run of segments that ends with the newest one."""
    have = _segments(directory)
    first = max(have)
    while first - 1 in have:
        first -= 1
    return first * SEG


def _chain_view(directory: str, dest: str, timeline: int, switch_point: int) -> str:
    """What pg_waldump -t ``timeline`` should read: each segment the timeline chain has, named for ``timeline``."""
    os.makedirs(dest)
    for segno, tlis in _segments(directory).items():
        if timeline in tlis:
            tli = timeline
        elif (segno + 1) * SEG <= switch_point:
            tli = max(tlis)
        else:
            continue
        os.link(os.path.join(directory, wal_file_name(tli, segno)), os.path.join(dest, wal_file_name(timeline, segno)))
    return dest


@pytest.mark.pg
@pytest.mark.slow
@pytest.mark.parametrize("server", ["standby", "primary"])
def test_real_wal_sampled_starts_match_pg_waldump(real_wal: RealWal, server: str) -> None:
    d = real_wal.tli1 if server == "standby" else real_wal.primary
    dump = waldump(d, 1, _first_lsn(d), blocks=True)
    recs = dump.records
    end = dump.end(0)
    assert len(recs) > 3000 and end > 0
    # the WAL holds what the test placed there: full-page images, plain and compressed, ...
    assert "(FPW); hole: offset" in dump.text and "method: pglz" in dump.text
    assert any(r.end - r.lsn > 12 * PAGE for r in recs)
    assert real_wal.split_header % PAGE == PAGE - 16 and any(r.lsn == real_wal.split_header for r in recs)
    assert any(r.end == real_wal.page_end for r in recs)
    assert any(r.lsn < real_wal.across_segment[1] // SEG * SEG < r.end for r in recs)
    assert any(r.switch and r.end == real_wal.segment_start for r in recs)
    assert any(r.lsn == real_wal.segment_start + 40 for r in recs)
    # the whole walk, timed
    read, calls = files_reader(d)
    t = time.perf_counter()
    assert end_of_wal(read, os.listdir(d), recs[0].lsn, 1, ()) == end
    took = time.perf_counter() - t
    size = sum(r.tot_len for r in recs)
    print(f"\nend_of_wal over the {server}'s WAL: {len(recs)} records, {size / 1e6:.1f} MB in {took:.2f} s: "
          f"{size / took / 1e6:.0f} MB/s, {calls[0]} reads of {len(_segments(d))} segment files")  # fmt: skip
    # sampled starts: spread over the WAL and dense near its end; pg_waldump from each
    step = len(recs) // (12 if server == "standby" else 4)
    sample = {recs[i].lsn for i in range(0, len(recs), step)} | {
        r.lsn for r in recs[-30 if server == "standby" else -5 :]
    }
    sample |= {r.end for r in recs[-4:]}  # record ends: where the next would start (the last: nothing there)
    for start in sorted(sample):
        expected = waldump(d, 1, start).end(start)
        assert expected == end or start == end, hex(start)
        assert ours(d, start, 1) == expected, hex(start)


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_starts_on_page_and_segment_boundaries(real_wal: RealWal) -> None:
    d = real_wal.tli1
    end = waldump(d, 1, _first_lsn(d)).end(0)
    for start in (real_wal.page_end, real_wal.segment_start, real_wal.split_header):
        assert start % PAGE == 0 or start == real_wal.split_header
        expected = waldump(d, 1, start).end(start)
        assert ours(d, start, 1) == expected == end, hex(start)
    assert real_wal.segment_start % SEG == 0 and real_wal.page_end % PAGE == 0


def _tail(real_wal: RealWal) -> tuple[list[Rec], str]:
    """The last segment's records, and a copy of the WAL to damage (hard links but for the last segment)."""
    d = real_wal.tli1
    recs = waldump(d, 1, _first_lsn(d)).records
    last_seg = recs[-1].lsn // SEG
    copy = tempfile.mkdtemp(prefix="pgcohort-waldamage-", dir=real_wal.root)
    for name in os.listdir(d):
        parsed = parse_wal_file_name(name)
        if parsed and parsed[1] == last_seg:
            shutil.copy(os.path.join(d, name), os.path.join(copy, name))
        elif parsed:
            os.link(os.path.join(d, name), os.path.join(copy, name))
    return [r for r in recs if r.lsn // SEG == last_seg], copy


def _poke(directory: str, lsn: int, data: bytes) -> None:
    with open(os.path.join(directory, wal_file_name(1, lsn // SEG)), "r+b") as f:
        f.seek(lsn % SEG)
        f.write(data)


def _damage_and_compare(real_wal: RealWal, damage: Callable[[list[Rec], str], int]) -> None:
    """Damage a copy of the last segment; from its first record, pg_waldump and end_of_wal must stop at one place."""
    recs, copy = _tail(real_wal)
    try:
        expected_end = damage(recs, copy)
        start = recs[0].lsn
        expected = waldump(copy, 1, start).end(start)
        assert expected == expected_end, (hex(expected), hex(expected_end))
        assert ours(copy, start, 1) == expected
    finally:
        shutil.rmtree(copy)


def _stale_page(directory: str, addr: int) -> bytes:
    """A valid WAL page from another place (a recycled segment holds such pages), for the page at ``addr``."""
    for at in (addr % SEG, *range(PAGE, SEG, PAGE)):
        for segno in sorted(_segments(directory)):
            with open(os.path.join(directory, wal_file_name(1, segno)), "rb") as f:
                f.seek(at)
                page = f.read(PAGE)
            magic, info, _, pageaddr = struct.unpack_from("<HHIQ", page)
            if magic == 0xD110 and not info & 2 and pageaddr != addr:
                return page
    raise AssertionError("no other WAL page to put there")


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_truncated_inside_the_last_record(real_wal: RealWal) -> None:
    cut = 0

    def damage(recs: list[Rec], copy: str) -> int:
        nonlocal cut
        last = recs[-1]
        cut = (last.lsn + last.end) // 2
        with open(os.path.join(copy, wal_file_name(1, last.lsn // SEG)), "r+b") as f:
            f.truncate(cut % SEG)
        # the page the cut falls in is short: no record touching it can be read (pg_waldump: "could not read")
        return max(r.end for r in recs if r.end <= cut - cut % PAGE)

    _damage_and_compare(real_wal, damage)
    recs, copy = _tail(real_wal)
    try:
        with open(os.path.join(copy, wal_file_name(1, cut // SEG)), "r+b") as f:
            f.truncate(cut % SEG)
        inside = next(r for r in recs if r.lsn >= cut - cut % PAGE)
        assert waldump(copy, 1, inside.lsn).records == []
        with pytest.raises(WalError):
            ours(copy, inside.lsn, 1)  # its own page is short: nothing is known
    finally:
        shutil.rmtree(copy)


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_one_flipped_byte(real_wal: RealWal) -> None:
    def damage(recs: list[Rec], copy: str) -> int:
        victim = next(r for r in reversed(recs[:-20]) if r.tot_len > 40 and r.lsn % PAGE + 40 < PAGE)
        with open(os.path.join(copy, wal_file_name(1, victim.lsn // SEG)), "r+b") as f:
            f.seek(victim.lsn % SEG + 30)
            byte = f.read(1)
            f.seek(victim.lsn % SEG + 30)
            f.write(bytes([byte[0] ^ 0x10]))
        return recs[recs.index(victim) - 1].end

    _damage_and_compare(real_wal, damage)


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_zeroed_tail(real_wal: RealWal) -> None:
    def damage(recs: list[Rec], copy: str) -> int:
        victim = recs[-10]
        _poke(copy, victim.lsn, bytes(SEG - victim.lsn % SEG))
        return recs[-11].end

    _damage_and_compare(real_wal, damage)


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_recycled_page_after_the_last_record(real_wal: RealWal) -> None:
    """A page of an older segment (valid magic, wrong xlp_pageaddr) where the WAL goes on: a recycled segment."""

    def damage(recs: list[Rec], copy: str) -> int:
        # a record running into the next page: that page is replaced; everything after it is zeroed
        victim = next(r for r in reversed(recs[:-5]) if r.lsn // PAGE != (r.end - 1) // PAGE)
        page = victim.lsn - victim.lsn % PAGE + PAGE
        stale = _stale_page(copy, page)
        _poke(copy, page, stale + bytes(SEG - page % SEG - PAGE))
        return max(r.end for r in recs if r.end <= victim.lsn)

    _damage_and_compare(real_wal, damage)


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_recycled_page_after_a_page_boundary(real_wal: RealWal) -> None:
    """The WAL ends exactly on a page boundary and the next page is a stale one from an older segment."""

    page_end_seg = real_wal.page_end // SEG
    d = real_wal.tli1
    copy = tempfile.mkdtemp(prefix="pgcohort-waldamage-", dir=real_wal.root)
    try:
        for name in os.listdir(d):
            if parse_wal_file_name(name) == (1, page_end_seg):
                shutil.copy(os.path.join(d, name), os.path.join(copy, name))
            elif parse_wal_file_name(name):
                os.link(os.path.join(d, name), os.path.join(copy, name))
        stale = _stale_page(copy, real_wal.page_end)
        _poke(copy, real_wal.page_end, stale)
        before = next(r for r in waldump(d, 1, _first_lsn(d)).records if r.end == real_wal.page_end)
        expected = waldump(copy, 1, before.lsn).end(before.lsn)
        assert expected == real_wal.page_end
        assert ours(copy, before.lsn, 1) == expected
        assert ours(copy, real_wal.page_end, 1) == real_wal.page_end
    finally:
        shutil.rmtree(copy)


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_across_a_timeline_switch(real_wal: RealWal) -> None:
    """The promoted standby, the same with timeline 1's last segment renamed .partial (as a server with archiving
    leaves it: only timeline 2's copy of that segment is left), and a standby that followed it."""
    history = real_wal.history
    assert history[-1].tli == 1 and real_wal.switch_point > 0
    partial = os.path.join(real_wal.root, "partial")
    os.makedirs(partial)
    fork_segment = wal_file_name(1, real_wal.switch_point // SEG)
    for name in os.listdir(real_wal.promoted):
        target = name + ".partial" if name == fork_segment else name
        os.link(os.path.join(real_wal.promoted, name), os.path.join(partial, target))
    for d in (real_wal.promoted, partial, real_wal.follower):
        names = os.listdir(d)
        assert "00000002.history" in names
        tlis = {t for t, _ in filter(None, map(parse_wal_file_name, names))}
        assert tlis == {1, 2}, names
        view = _chain_view(d, d + ".view", 2, real_wal.switch_point)
        full = waldump(view, 2, _first_lsn(view))
        end = full.end(0)
        assert end > real_wal.switch_point and any(r.lsn == real_wal.switch_point for r in full.records)
        before = [r for r in full.records if r.lsn < real_wal.switch_point]
        after = [r for r in full.records if r.lsn >= real_wal.switch_point]
        sample = {before[0].lsn, before[len(before) // 2].lsn, before[-1].lsn, real_wal.switch_point}
        sample |= {after[1].lsn, after[len(after) // 2].lsn, after[-1].lsn, after[-1].end}
        for start in sorted(sample):
            expected = waldump(view, 2, start).end(start)
            assert ours(d, start, 2, history) == expected, (d, hex(start))
            assert expected == end or start == end
        # read as timeline 1 alone, timeline 1's files end at the switch point (the old primary wrote no more)
        if d != partial:
            assert ours(d, before[0].lsn, 1) == real_wal.switch_point
    assert fork_segment in os.listdir(real_wal.follower)


@pytest.mark.pg
@pytest.mark.slow
def test_real_wal_missing_segment_is_an_error(real_wal: RealWal) -> None:
    d = real_wal.tli1
    last = max(_segments(d))
    with pytest.raises(WalError):
        ours(d, (last + 1) * SEG, 1)
    read, _ = files_reader(d)
    with pytest.raises(WalError):
        end_of_wal(read, [n for n in os.listdir(d) if parse_wal_file_name(n) != (1, last)], last * SEG + 40, 1, ())
