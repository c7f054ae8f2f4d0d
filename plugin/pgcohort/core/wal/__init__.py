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

from pgcohort.core.wal.crc import crc32c
from pgcohort.core.wal.names import Switch, parse_history, parse_wal_file_name, wal_file_name
from pgcohort.core.wal.reader import WalRead, end_of_wal
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
