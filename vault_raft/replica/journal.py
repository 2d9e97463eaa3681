"""A durable Raft journal for pysyncobj: persist what is ready, then send.

pysyncobj 0.3.17's ``FileJournal`` writes through mmap and never syncs.  This
journal replaces it (see :mod:`vault_raft.replica.raft`) and keeps etcd's rule:

* :meth:`add` / :meth:`deleteEntriesFrom` only *write* (no sync): appends are
  cheap and batch naturally;
* :meth:`sync` makes everything written so far durable with one
  ``fdatasync``; the replica's transport calls it before *every* outgoing
  message, so no node ever acknowledges, votes or replicates an entry that
  is not on its disk (group commit: one sync per send round, no sync when
  nothing changed);
* :meth:`setCurrentTerm` (term and vote) is written and fsynced, file and
  directory, before it returns -- pysyncobj sends the vote afterwards;
* the commit index is advisory (Raft does not need it durable) and is
  written once a second, atomically.

File format: an 8-byte header ``b"VRJ1\\0\\0\\0\\0"``, then records
``len:u32 crc32:u32 idx:u64 term:u64 command`` (little endian; ``len``
counts idx+term+command, the CRC covers the same bytes).  On open, a torn
tail -- damage after which no intact record follows (a partial last record,
a bad checksum, zero fill) -- is truncated away: it was never synced, hence
never acknowledged.  Damage followed by an intact later record is
corruption of synced data: :class:`JournalCorrupt` is raised and the node
refuses to start rather than forget acknowledged entries.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import msgpack

log = logging.getLogger("vault_raft.journal")

HEADER = b"VRJ1\0\0\0\0"
_REC = struct.Struct("<IIQQ")  # len, crc, idx, term
_MAX_RECORD = 64 * 1024 * 1024


class JournalCorrupt(Exception):
    """The journal or its metadata is damaged beyond a torn tail."""


def fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: tmp file, fsync, rename, fsync dir."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path)


_RELEASER: ThreadPoolExecutor | None = None


def _release(fd: int) -> None:
    """Close ``fd`` on a helper thread (see DurableJournal.deleteEntriesTo)."""
    global _RELEASER
    if _RELEASER is None:
        _RELEASER = ThreadPoolExecutor(1, thread_name_prefix="journal-release")
    _RELEASER.submit(os.close, fd)


def _encode(command: bytes, idx: int, term: int) -> bytes:
    body = struct.pack("<QQ", idx, term) + command
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def raft_add_position(entries: list, idx: int, term: int) -> tuple[str, int]:
    """Raft's AppendEntries rule for one incoming entry (receiver step 3-4).

    Returns ("skip", pos) if the log already holds this entry (same index and
    term: by the log matching property, the same entry), ("cut", pos) if the
    entry at that index conflicts (different term: drop it and all after it,
    then append), or ("append", len) otherwise.
    """
    if entries:
        first, last = entries[0][1], entries[-1][1]
        if first <= idx <= last:
            pos = idx - first
            return ("skip", pos) if entries[pos][2] == term else ("cut", pos)
    return "append", len(entries)


class DurableJournal:
    """pysyncobj ``Journal`` interface backed by an append-only, checksummed file.

    **Raft-conformant truncation** (``RAFT_CONFORMANT_TRUNCATION``): pysyncobj
    0.3.17's follower deletes every entry after ``prevLogIdx`` on each
    append and re-adds what the message carries; a duplicated, delayed or
    reordered (shorter) append therefore makes a follower drop entries it
    already acknowledged, even applied ones -- and if log compaction runs in
    between, the journal ends up empty and every later message fails.  Raft
    says: delete only from the first entry whose term conflicts.  So
    ``deleteEntriesFrom`` is a no-op here and ``add`` truncates on conflict
    (see :func:`raft_add_position`).  Candidate upstream fix: the same rule in
    ``SyncObj.__onMessageReceived``.  Tests switch it off to show the
    upstream behaviour.
    """

    RAFT_CONFORMANT_TRUNCATION = True

    #: Space is reserved ahead of the log's end in chunks of this many bytes
    #: (``posix_fallocate``), as etcd's WAL does: an ``fdatasync`` after an
    #: append inside the file's size need not also commit a new file size,
    #: which made it 15-30% faster, and its tail far shorter, on this
    #: project's disk (docs/design.md).  The reserved space reads as zeros; a
    #: clean close trims it.  0 turns it off.
    PREALLOCATE = 4 * 1024 * 1024

    def __init__(self, path: str, trace: Callable[..., None] | None = None):
        self.path = path
        self.meta_path = path + ".meta"
        self.trace = trace  # tests: trace(event, *args) records the order of I/O
        self.syncs = 0
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []
        self._dirty = False
        self._synced_idx = 0
        self._meta = self._load_meta()
        self._meta_dirty = False
        self._fd = -1
        self._alloc = 0  # file size: the log's end plus reserved space
        self._open()

    # ------------------------------------------------------------ files
    def _load_meta(self) -> dict:
        try:
            with open(self.meta_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        if len(raw) < 4 or zlib.crc32(raw[4:]) != struct.unpack("<I", raw[:4])[0]:
            raise JournalCorrupt(f"{self.meta_path}: checksum mismatch")
        meta = msgpack.unpackb(raw[4:], raw=False)
        if not isinstance(meta, dict):
            raise JournalCorrupt(f"{self.meta_path}: not a map")
        return meta

    def _store_meta(self) -> None:
        body = msgpack.packb(self._meta, use_bin_type=True)
        atomic_write(self.meta_path, struct.pack("<I", zlib.crc32(body)) + body)
        self._meta_dirty = False

    def _open(self) -> None:
        if not os.path.exists(self.path):
            atomic_write(self.path, HEADER)
        with open(self.path, "rb") as f:
            data = f.read()
        if data[:len(HEADER)] != HEADER:
            raise JournalCorrupt(f"{self.path}: bad header")
        off = len(HEADER)
        good_end = off
        prev_idx = None
        while off < len(data):
            if len(data) - off < _REC.size:
                break  # torn header of the last record
            length, crc, idx, term = _REC.unpack_from(data, off)
            end = off + 8 + length
            if length < 16 or length > _MAX_RECORD or end > len(data):
                break
            body = data[off + 8:end]
            if zlib.crc32(body) != crc or (prev_idx is not None and idx != prev_idx + 1):
                break
            self._entries.append((body[16:], idx, term))
            self._offsets.append(off)
            prev_idx = idx
            off = good_end = end
        used = len(data.rstrip(b"\0"))  # a zero tail is reserved space (or a torn zero fill)
        if good_end < used:
            rest = data[good_end:]
            if self._valid_record_after(data[:used], good_end, (prev_idx or 0) + 1):
                raise JournalCorrupt(
                    f"{self.path}: damaged record at byte {good_end} followed by more data; "
                    "refusing to start (acknowledged entries may be behind it)")
            log.warning("journal %s: dropping torn tail of %d bytes at offset %d",
                        self.path, len(rest), good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
            data = data[:good_end]
        self._fd = os.open(self.path, os.O_WRONLY)
        self._end = good_end
        self._alloc = len(data)
        self._synced_idx = self._entries[-1][1] if self._entries else 0

    @staticmethod
    def _valid_record_after(data: bytes, start: int, next_idx: int) -> bool:
        """Is there an intact record (good CRC, index >= next_idx) past ``start``?

        If so, the damage at ``start`` is not a torn tail but corruption of
        data that was synced (and maybe acknowledged).  Only run on recovery.
        """
        for off in range(start + 1, len(data) - _REC.size + 1):
            length, crc, idx, _ = _REC.unpack_from(data, off)
            if idx < next_idx or length < 16 or off + 8 + length > len(data):
                continue
            if zlib.crc32(data[off + 8:off + 8 + length]) == crc:
                return True
        return False

    # ------------------------------------------- pysyncobj Journal API
    def add(self, command: bytes, idx: int, term: int) -> None:
        if self.RAFT_CONFORMANT_TRUNCATION:
            action, pos = raft_add_position(self._entries, idx, term)
            if action == "skip":
                return
            if action == "cut":
                self._truncate(pos)
        rec = _encode(bytes(command), idx, term)
        if self._end + len(rec) > self._alloc:
            self._reserve(len(rec))
        view, pos = memoryview(rec), self._end
        while view:
            n = os.pwrite(self._fd, view, pos)
            view, pos = view[n:], pos + n
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(rec)
        self._dirty = True
        if self.trace:
            self.trace("append", idx, term)

    def _reserve(self, need: int) -> None:
        """Grow the file to hold ``need`` more bytes, plus the reserve."""
        size = self._end + need
        if self.PREALLOCATE:
            try:
                os.posix_fallocate(self._fd, self._alloc, size + self.PREALLOCATE - self._alloc)
                size += self.PREALLOCATE
            except OSError as exc:  # e.g. no fallocate here: plain appends still work
                log.warning("journal %s: cannot reserve space (%s); appending", self.path, exc)
                self.PREALLOCATE = 0
        self._alloc = max(self._alloc, size)

    def sync(self) -> None:
        """Make every written entry durable (called before each send)."""
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
            self.syncs += 1
            self._synced_idx = self._entries[-1][1] if self._entries else 0
            if self.trace:
                self.trace("sync", self._synced_idx)

    @property
    def synced_index(self) -> int:
        """Index of the last entry known to be on disk."""
        return self._synced_idx

    def clear(self) -> None:
        os.ftruncate(self._fd, len(HEADER))
        self._end = self._alloc = len(HEADER)
        self._entries, self._offsets = [], []
        self._dirty = True
        if self.trace:
            self.trace("clear")

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if self.RAFT_CONFORMANT_TRUNCATION:
            return  # truncation happens in add(), and only on a term conflict
        self._truncate(entryFrom)

    def _truncate(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        if entryFrom < 0:
            entryFrom = max(0, len(self._entries) + entryFrom)
        cut = self._offsets[entryFrom]
        os.ftruncate(self._fd, cut)  # also drops the reserve: no stale record survives
        self._end = self._alloc = cut
        if self.trace and self._entries[entryFrom:]:
            self.trace("truncate", self._entries[entryFrom][1])
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Log compaction: drop entries before ``entryTo`` (a snapshot covers them).

        pysyncobj renamed the snapshot into place without syncing the
        directory; make that rename durable first, then rewrite the journal
        atomically, so a crash leaves either the old journal or the new one.
        """
        if entryTo >= len(self._entries):
            # Never compact to an empty log: pysyncobj needs its first entry.
            log.error("journal %s: compaction past the log end (%d >= %d) skipped",
                      self.path, entryTo, len(self._entries))
            return
        keep = self._entries[entryTo:]
        fsync_dir(self.path)
        blob = HEADER + b"".join(_encode(bytes(c), i, t) for c, i, t in keep)
        old_fd = self._fd
        atomic_write(self.path, blob)
        self._fd = os.open(self.path, os.O_WRONLY)
        # Closing the last descriptor of the replaced file frees its blocks
        # (with discard, synchronously): 11 ms for 50 MB here, more under load.
        # Not on the Raft thread.
        _release(old_fd)
        self._alloc = len(blob)
        self._entries = list(keep)
        self._offsets = []
        off = len(HEADER)
        for c, i, t in keep:
            self._offsets.append(off)
            off += 24 + len(c)
        self._end = off
        self._dirty = False
        if self.trace:
            self.trace("compact", keep[0][1] if keep else None)

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd >= 0:
            self.sync()
            if self._alloc > self._end:  # a clean close leaves no reserve behind
                os.ftruncate(self._fd, self._end)
                os.fdatasync(self._fd)
            if self._meta_dirty:
                self._store_meta()
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if self._meta.get("commit") != raftCommitIndex:
            self._meta["commit"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._meta.get("commit", 1)

    def setCurrentTerm(self, term: int, votedForNodeId) -> None:
        self._meta["term"] = term
        self._meta["vote"] = votedForNodeId
        self._store_meta()  # durable (file + directory) before pysyncobj sends
        if self.trace:
            self.trace("term", term, votedForNodeId)

    def getCurrentTerm(self) -> int:
        return self._meta.get("term", 0)

    def getVotedForNodeId(self):
        return self._meta.get("vote")

    def onOneSecondTimer(self) -> None:
        if self._meta_dirty:
            self._store_meta()
