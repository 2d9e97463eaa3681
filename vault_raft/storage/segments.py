"""Journal segment files: their format, their names, and reading one back.

Like etcd's WAL, the log is a chain of segment files: ``path`` (segment 0),
then ``path.00000001``, ``path.00000002``, ...  Each segment is an 8-byte
header ``b"VRJ1\\0\\0\\0\\0"``, then records ``len:u32 crc32:u32 idx:u64
term:u64 command`` (little endian; ``len`` counts idx+term+command, the CRC
covers the same bytes).  Indexes run on without a gap from segment to
segment.  Space reserved ahead of the last record reads as zeros.

:class:`SegmentFiles` is the journal's side of them: opening the chain (a
torn tail dropped, corruption refused), reserving space, rolling over to a
new segment (made ahead of time on a helper thread), deleting segments.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from vault_raft.storage.errors import JournalCorrupt
from vault_raft.storage.files import atomic_write, fsync_dir

log = logging.getLogger("vault_raft.journal")

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


def _raise(exc: OSError):
    raise exc


class SegmentFiles:
    """The segment chain of a :class:`~vault_raft.storage.journal.DurableJournal`
    (a mixin: it uses the journal's path, entries, offsets and ``_io``)."""

    PREALLOCATE: int
    SEGMENT_BYTES: int
    path: str
    trace: Callable[..., None] | None
    _entries: list[tuple[bytes, int, int]]
    _offsets: list[int]
    _segs: list[Segment]
    _spare: Future[Segment] | None
    if TYPE_CHECKING:
        def _io(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def _open(self) -> None:
        seqs = self._segment_seqs()
        images, damage, prev_idx = self._read_segments(seqs)
        if damage is not None:
            self._drop_torn_tail(seqs, images, damage, prev_idx)
        for seg, data in zip(self._segs, images, strict=False):
            seg.fd = os.open(seg.path, os.O_WRONLY)
            seg.alloc = len(data)
            # After a crash of the process alone, what was read above may be
            # the page cache's, never synced: sync it before this node
            # acknowledges any of it (sync() only syncs what it wrote itself).
            os.fdatasync(seg.fd)
        self._synced_idx = self._entries[-1][1] if self._entries else 0

    def _segment_seqs(self) -> list[int]:
        """The segments on disk (a new journal gets segment 0); JournalCorrupt
        if one is missing between two others."""
        seqs = list_segments(self.path)
        if not seqs:
            atomic_write(self.path, HEADER)
            seqs = [0]
        for a, b in zip(seqs, seqs[1:], strict=False):  # compaction deletes from the front
            if b != a + 1:
                raise JournalCorrupt(
                    f"{segment_path(self.path, a + 1)} is missing (between "
                    f"{os.path.basename(segment_path(self.path, a))} and "
                    f"{os.path.basename(segment_path(self.path, b))}); refusing to start "
                    "(acknowledged entries were in it)")
        return seqs

    def _read_segments(self, seqs: list[int]):
        """Read every segment, keeping the entries up to the first damage:
        ``(images, damage, last index)``, ``damage`` being (segment position,
        offset) where the intact log ends, or None."""
        prev_idx = None
        images = []
        damage = None
        for k, seq in enumerate(seqs):
            seg = Segment(seq, segment_path(self.path, seq))
            with open(seg.path, "rb") as f:
                data = f.read()
            if data[:len(HEADER)] != HEADER:
                raise JournalCorrupt(f"{seg.path}: bad header")
            images.append(data)
            if damage is not None:
                continue
            self._segs.append(seg)
            records, good_end = scan_records(data, prev_idx)
            for command, idx, term, off in records:
                self._entries.append((command, idx, term))
                self._offsets.append(off)
            if records:
                seg.first = records[0][1]
                prev_idx = records[-1][1]
            seg.end = good_end
            if good_end < len(data.rstrip(b"\0")):  # a zero tail is reserved space
                damage = (k, good_end)
        return images, damage, prev_idx

    def _drop_torn_tail(self, seqs: list[int], images: list[bytes], damage: tuple[int, int],
                        prev_idx: int | None) -> None:
        """Truncate a torn tail away (and the empty segments after it), or
        raise JournalCorrupt if an intact record follows the damage."""
        k, good_end = damage
        later = [d[:len(d.rstrip(b"\0"))] for d in images[k:]]
        starts = [good_end] + [len(HEADER)] * (len(later) - 1)
        if any(valid_record_after(d, st - 1, (prev_idx or 0) + 1)
               for d, st in zip(later, starts, strict=False)):
            raise JournalCorrupt(
                f"{segment_path(self.path, seqs[k])}: damaged record at byte {good_end} "
                "followed by more data; refusing to start (acknowledged entries may be "
                "behind it)")
        log.warning("journal %s: dropping torn tail of %d bytes at offset %d",
                    self.path, len(images[k]) - good_end, good_end)
        spath = segment_path(self.path, seqs[k])
        with open(spath, "r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
        images[k] = images[k][:good_end]
        for seq in seqs[k + 1:]:  # nothing intact in them: zero fill at most
            os.unlink(segment_path(self.path, seq))
        if seqs[k + 1:]:
            fsync_dir(self.path)
        del self._segs[k + 1:], images[k + 1:]

    def _segment_of(self, idx: int) -> int:
        """Position in ``_segs`` of the segment holding entry ``idx``."""
        for k in range(len(self._segs) - 1, -1, -1):
            first = self._segs[k].first
            if first is not None and first <= idx:
                return k
        return 0

    @property
    def _end(self) -> int:
        return self._segs[-1].end

    @property
    def segments(self) -> list[str]:
        """The segment files, oldest first."""
        return [s.path for s in self._segs]

    def _reserve(self, seg: Segment, need: int) -> None:
        """Grow the segment to hold ``need`` more bytes, plus the reserve."""
        size = seg.end + need
        if self.PREALLOCATE:
            try:
                os.posix_fallocate(seg.fd, seg.alloc, size + self.PREALLOCATE - seg.alloc)
                size += self.PREALLOCATE
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self._io(_raise, exc)  # no space, or an I/O error: a storage failure
                # no fallocate on this file system: plain appends still work
                log.warning("journal %s: cannot reserve space (%s); appending", self.path, exc)
                self.PREALLOCATE = 0
        seg.alloc = max(seg.alloc, size)

    def _roll(self) -> Segment:
        """Seal the last segment (trimmed and synced: a torn tail can only be in
        the last segment) and start the next one."""
        old = self._segs[-1]
        if old.alloc > old.end:
            self._io(os.ftruncate, old.fd, old.end)
            old.alloc = old.end
        self._io(os.fdatasync, old.fd)
        seg = self._take_spare()
        if seg is None:
            seg = self._io(self._create_segment, old.seq + 1)
        self._segs.append(seg)
        if self.trace:
            self.trace("segment", seg.seq)
        return seg

    def _create_segment(self, seq: int) -> Segment:
        """A new, empty segment: created atomically (file and directory entry
        durable), its first space reserved.  The helper thread makes the next
        one ahead of time, once the last segment is half full (``_spare``)."""
        seg = Segment(seq, segment_path(self.path, seq))
        atomic_write(seg.path, HEADER)
        seg.fd = os.open(seg.path, os.O_WRONLY)
        self._reserve(seg, 0)
        return seg

    def _take_spare(self) -> Segment | None:
        """The segment made ahead of time, if it was made (None if it failed:
        the caller makes one itself, and reports the error if it fails too)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            return spare.result()
        except OSError as exc:
            log.warning("journal %s: next segment not made ahead of time: %s", self.path, exc)
            return None

    def _drop_spare(self) -> None:
        """Delete the segment made ahead of time (truncation, clear, close)."""
        seg = self._take_spare()
        if seg is not None:
            os.close(seg.fd)
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass

    def _drop_segments(self, dead: list[Segment]) -> None:
        """Delete whole segments now, durably (truncation, clear, compaction)."""
        for s in dead:
            os.close(s.fd)
            os.unlink(s.path)
        if dead:
            fsync_dir(self.path)

    def _retire(self, dead: list[Segment]) -> None:
        """On the helper thread: closing a segment's last descriptor frees its
        blocks (with discard, synchronously: 11 ms for 50 MB here, more under
        load), so not on the Raft thread."""
        try:
            fsync_dir(self.path)  # the snapshot covering these entries is in place for good
            for seg in dead:  # oldest first, each deletion durable: no gap after a crash
                self._drop_segments([seg])
        except OSError as exc:  # a leftover segment is dropped again on restart
            log.error("journal %s: could not delete a compacted segment: %s", self.path, exc)
