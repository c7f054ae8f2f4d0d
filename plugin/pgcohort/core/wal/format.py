"""The PostgreSQL 15 WAL format: page and record headers, their flags, and the fragment headers of a record."""

from __future__ import annotations

import struct

from pgcohort.errors import WalError

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

PAGE = struct.Struct("<HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len
LONG = struct.Struct("<QII")  # xlp_sysid, xlp_seg_size, xlp_xlog_blcksz (after the short header)
RECORD = struct.Struct("<IIQBBxxI")  # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, (padding), xl_crc
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
IMAGE = struct.Struct("<HHB")  # XLogRecordBlockImageHeader: length, hole_offset, bimg_info


def check_layout(seg_size: int, page_size: int) -> None:
    """PostgreSQL's IsValidWalSegSize, and a WAL block size it can be built with."""
    if not (1 << 20 <= seg_size <= 1 << 30 and seg_size & (seg_size - 1) == 0):
        raise WalError(f"WAL segment size {seg_size} is not a power of two between 1 MB and 1 GB")
    if not (1 << 10 <= page_size <= 1 << 16 and page_size & (page_size - 1) == 0):
        raise WalError(f"WAL block size {page_size} is not a power of two between 1 kB and 64 kB")


def decodes(rec: bytes, block_size: int) -> bool:
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
            total = (total + U32.unpack_from(rec, at)[0]) & 0xFFFFFFFF
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
            data_len = U16.unpack_from(rec, at + 1)[0]
            at += 3
            remaining -= 3
            if bool(fork_flags & BKPBLOCK_HAS_DATA) != (data_len != 0):
                return False
            total = (total + data_len) & 0xFFFFFFFF
            if fork_flags & BKPBLOCK_HAS_IMAGE:
                if remaining < 5:
                    return False
                image_len, hole_offset, image_info = IMAGE.unpack_from(rec, at)
                at += 5
                remaining -= 5
                compressed = image_info & BKPIMAGE_COMPRESSED
                has_hole = image_info & BKPIMAGE_HAS_HOLE
                if compressed:
                    hole_len = 0
                    if has_hole:
                        if remaining < 2:
                            return False
                        hole_len = U16.unpack_from(rec, at)[0]
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
