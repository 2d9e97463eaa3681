"""Journal segment files: their format, their names, and reading one back.

Like etcd's WAL, the log is a chain of segment files: ``path`` (segment 0),
then ``path.00000001``, ``path.00000002``, ...  Each segment is an 8-byte
header ``b"VRJ1\\0\\0\\0\\0"``, then records ``len:u32 crc32:u32 idx:u64
term:u64 command`` (little endian; ``len`` counts idx+term+command, the CRC
covers the same bytes).  Indexes run on without a gap from segment to
segment.  Space reserved ahead of the last record reads as zeros.
"""

from __future__ import annotations

import os
import struct
import zlib

HEADER = b"VRJ1\0\0\0\0"
REC = struct.Struct("<IIQQ")  # len, crc, idx, term
MAX_RECORD = 64 * 1024 * 1024


def segment_path(path: str, seq: int) -> str:
    """File of segment ``seq`` of the journal at ``path``."""
    return path if seq == 0 else f"{path}.{seq:08d}"


def list_segments(path: str) -> list[int]:
    """Sequence numbers of the segment files present, oldest first."""
    folder, base = os.path.split(os.path.abspath(path))
    seqs = []
    for name in os.listdir(folder):
        if name == base:
            seqs.append(0)
        elif name.startswith(base + ".") and len(name) >= len(base) + 9 \
                and name[len(base) + 1:].isdigit():
            seqs.append(int(name[len(base) + 1:]))
    return sorted(seqs)


def encode_record(command: bytes, idx: int, term: int) -> bytes:
    body = struct.pack("<QQ", idx, term) + command
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


class Segment:
    """One segment file: its descriptor, first entry, end of records, size."""

    __slots__ = ("seq", "path", "fd", "first", "end", "alloc")

    def __init__(self, seq: int, path: str):
        self.seq, self.path = seq, path
        self.fd = -1
        self.first: int | None = None  # index of its first entry
        self.end = len(HEADER)  # end of its records
        self.alloc = len(HEADER)  # file size: records plus reserved space


def scan_records(data: bytes, prev_idx: int | None):
    """The intact records of a segment image, from its header on, up to the
    first damage (a partial record, a bad checksum, an index that does not
    follow ``prev_idx``, zero fill): ``(records, good_end)`` where each record
    is ``(command, idx, term, offset)`` and ``good_end`` is where they end."""
    records = []
    off = good_end = len(HEADER)
    while off < len(data):
        if len(data) - off < REC.size:
            break  # torn header of the last record
        length, crc, idx, term = REC.unpack_from(data, off)
        end = off + 8 + length
        if length < 16 or length > MAX_RECORD or end > len(data):
            break
        body = data[off + 8:end]
        if zlib.crc32(body) != crc or (prev_idx is not None and idx != prev_idx + 1):
            break
        records.append((body[16:], idx, term, off))
        prev_idx = idx
        off = good_end = end
    return records, good_end


def valid_record_after(data: bytes, start: int, next_idx: int) -> bool:
    """Is there an intact record (good CRC, index >= next_idx) past ``start``?

    If so, the damage at ``start`` is not a torn tail but corruption of
    data that was synced (and maybe acknowledged).  Only run on recovery.
    """
    for off in range(start + 1, len(data) - REC.size + 1):
        length, crc, idx, _ = REC.unpack_from(data, off)
        if idx < next_idx or length < 16 or off + 8 + length > len(data):
            continue
        if zlib.crc32(data[off + 8:off + 8 + length]) == crc:
            return True
    return False
