"""A durable Raft journal for pysyncobj: persist what is ready, then send.

pysyncobj 0.3.17's ``FileJournal`` writes through mmap and never syncs.  This
journal replaces it (see :mod:`vault_raft.raft.replica`) and keeps etcd's rule:

* :meth:`add` / :meth:`deleteEntriesFrom` only *write* (no sync): appends are
  cheap and batch naturally;
* :meth:`sync` makes everything written so far durable with one
  ``fdatasync``; the replica calls it before every message that depends on
  the log or the vote (acks, votes, vote requests), so no node acknowledges
  or votes for an entry that is not on its disk, and the leader calls it
  right after each append round and at the start of each tick, before it
  counts its own copy toward a commit (group commit: one sync per round, no
  sync when nothing changed);
* :meth:`setCurrentTerm` (term and vote) is written and fsynced, file and
  directory, before it returns -- pysyncobj sends the vote afterwards;
* the commit index is advisory (Raft does not need it durable; a stale one
  is only lower): it is written in place once a second, with a checksum and
  without a sync, to its own file.

**The durability mark** (``path.mark``, :mod:`.durability`): what this node has made durable
and may have acknowledged -- the last synced entry (index and term) and the
term and vote -- in two checksummed slots written alternately in place and
synced right after each journal sync and each term change.  A second copy
of something every other file also says, so that the damage of any *one*
file (a torn or flipped last record, a deleted segment or snapshot, a lost
term/vote file) is noticed instead of silently forgetting acknowledged
entries: on open, a log that ends below the mark, or that starts after the
snapshot's end (a lost first segment or snapshot), puts the journal in
*recovery* (:attr:`DurableJournal.recovery`) until entries up to the mark
are back from the leader; the replica then neither campaigns nor votes for
a candidate whose log is behind the mark, and serves nothing.  A lost
term/vote file is restored from the mark; if both are lost, the node takes
its log's last term with an unknown vote (:data:`LOST_VOTE`), so it cannot
vote twice in a term.

**Storage failures.**  Any error writing or syncing the journal, the mark or
the term/vote file is reported once to :attr:`DurableJournal.on_failure`
(the replica crash-stops the node: after a failed ``fdatasync`` the page
cache may hold data that never reaches the disk, so nothing written after
the last good sync is trusted, see ``truncate_after``).

**Segments** (:mod:`.segments`, which gives the file format).  Appends go
to the last segment; when it reaches :attr:`DurableJournal.SEGMENT_BYTES`
it is trimmed and synced, and a new segment is started.  Log compaction
then deletes whole segments on a helper thread (oldest first, each deletion
made durable before the next) instead of rewriting the log on the Raft
thread; the first segment may still hold entries the snapshot covers, and a
restart drops them again when the snapshot is loaded.  On open, a torn tail
-- damage after which no intact record follows in the log (a partial last
record, a bad checksum, zero fill) -- is truncated away: it was never
synced, hence never acknowledged.  Damage followed by an intact later record
(or a gap between segments) is corruption of synced data:
:class:`~vault_raft.storage.errors.JournalCorrupt` is raised and the node
refuses to start rather than forget acknowledged entries.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from vault_raft.storage.durability import (
    COMMIT,
    LOST_VOTE,
    MARK_SLOT,
    META_ERRORS,
    UNKNOWN,
    assess_loss,
    mark_slot,
    pack_commit,
    pack_meta,
    parse_commit,
    parse_mark,
    parse_meta,
    raft_add_position,
    restore_term,
)
from vault_raft.storage.errors import JournalCorrupt, StorageFailed
from vault_raft.storage.files import atomic_write, fsync_dir
from vault_raft.storage.segments import (
    HEADER,
    Segment,
    encode_record,
    list_segments,
    scan_records,
    segment_path,
    valid_record_after,
)

log = logging.getLogger("vault_raft.journal")


_THREADS: dict[str, ThreadPoolExecutor] = {}


def _thread(name: str) -> ThreadPoolExecutor:
    """A single worker thread, made on first use."""
    if name not in _THREADS:
        _THREADS[name] = ThreadPoolExecutor(1, thread_name_prefix=name)
    return _THREADS[name]


def _helper() -> ThreadPoolExecutor:
    """The thread for file work the Raft thread must not wait for."""
    return _thread("journal-helper")


def _mark_syncer() -> ThreadPoolExecutor:
    """The thread that syncs the durability mark while the journal syncs."""
    return _thread("journal-mark")


def _free(lists: list[list]) -> None:
    """Drop the last references to the items of ``lists`` a slice at a time,
    sleeping in between so that other threads get the GIL (one ``del`` of a
    whole list would hold it until every item is freed)."""
    for items in lists:
        while items:
            del items[-2000:]
            time.sleep(0.0001)


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

    #: A segment is sealed and a new one started once it would grow past this
    #: many bytes (one entry always fits: a segment holds at least one).
    SEGMENT_BYTES = 16 * 1024 * 1024

    def __init__(self, path: str, trace: Callable[..., None] | None = None,
                 segment_bytes: int | None = None, snapshot_last=UNKNOWN,
                 truncate_after: int | None = None, durability_mark: bool = True):
        """``snapshot_last``: the (index, term) of the last entry the node's
        snapshot covers, or None if it has none (the replica passes it; the
        journal alone, without it, cannot tell a lost first segment).
        ``truncate_after``: drop entries after this index on open (they were
        written after the last good sync of a node that crash-stopped on a
        storage failure, so they may be only in the page cache).
        ``durability_mark=False`` writes no mark (only the bench's A/B uses it)."""
        self.durability_mark = durability_mark
        self.path = path
        if segment_bytes is not None:
            self.SEGMENT_BYTES = segment_bytes
        self.meta_path = path + ".meta"
        self.commit_path = path + ".commit"
        self.mark_path = path + ".mark"
        self.trace = trace  # tests: trace(event, *args) records the order of I/O
        self.syncs = 0
        self.recovery: dict | None = None  # {"need", "need_term", "reason"} while recovering
        self.on_failure: Callable[[OSError], None] | None = None  # set by the replica
        self.applied: Callable[[], int] | None = None  # the applied index (replica)
        self.on_sync: Callable[[float], None] | None = None  # seconds per sync (metrics)
        self.failed: OSError | None = None
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []  # each entry's offset in its segment
        self._segs: list[Segment] = []  # oldest first; appends go to the last
        self._dirty = False
        self._synced_idx = 0
        self._mark_fd = -1
        self._mark_seq = 0
        self._mark_written: tuple | None = None  # (high, high_term, term, vote) on disk
        self._meta_state = "ok"
        self._meta = self._load_meta()
        self._meta_dirty = False
        mark = self._load_mark()
        self._commit = self._load_commit()
        self._commit_dirty = False
        self._commit_fd = -1
        self._retiring: list = []  # helper-thread deletions not yet known done
        self._spare = None  # Future: the next segment, made ahead of time
        self._open()
        if truncate_after is not None and self._entries and self._entries[-1][1] > truncate_after:
            cut = next(k for k, e in enumerate(self._entries) if e[1] > truncate_after)
            log.warning("journal %s: dropping entries %d..%d written after the last good sync",
                        self.path, self._entries[cut][1], self._entries[-1][1])
            self._truncate(cut)
            self.sync()
        self._check_lost(mark, snapshot_last)
        self._restore_term(mark, snapshot_last)
        end = self._entries[-1][1] if self._entries else 0
        if snapshot_last not in (UNKNOWN, None):
            end = max(end, snapshot_last[0])
        end = max(end, 1)  # (pysyncobj's first entry, the same on every node)
        if self._commit > end:  # a commit index is only ever as good as the log under it
            log.warning("journal %s: saved commit index %d is past the log's end %d; "
                        "clamped", self.path, self._commit, end)
            self._commit = end
            self._commit_dirty = True

    # ------------------------------------------------------------ files
    def _load_meta(self) -> dict:
        """Term and vote; {} (with ``_meta_state`` saying why) if the file is
        missing or damaged: the mark holds a second copy."""
        try:
            with open(self.meta_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._meta_state = "missing"
            return {}
        try:
            return parse_meta(raw)
        except META_ERRORS as exc:
            log.warning("journal %s: term/vote file damaged (%s)", self.meta_path, exc)
            self._meta_state = "damaged"
            return {}

    def _store_meta(self) -> None:
        self._io(atomic_write, self.meta_path, pack_meta(self._meta))
        self._meta_dirty = False

    # -------------------------------------------------- durability mark
    def _load_mark(self) -> dict | None:
        """The newest intact slot of the mark, or None."""
        try:
            with open(self.mark_path, "rb") as f:
                raw = f.read(2 * MARK_SLOT)
        except FileNotFoundError:
            return None
        best = parse_mark(raw)
        if best is None:
            log.warning("journal %s: durability mark unreadable; trusting the log as it is",
                        self.mark_path)
        else:
            self._mark_seq = best["seq"]
        return best

    def _store_mark(self) -> None:
        """Write the mark (the last synced entry, term and vote) and sync it."""
        if self._write_mark(self._synced_idx):
            self._io(os.fdatasync, self._mark_fd)

    def _write_mark(self, synced: int) -> bool:
        """Write the mark, claiming entries up to ``synced`` durable, into the
        older slot (not synced); False if there was nothing new to write.
        While recovering it keeps the entry still to be fetched, so a restart
        remembers it."""
        last = self._entries[-1] if self._entries else None
        high = (last[1], last[2]) if last is not None and last[1] == synced else (0, 0)
        if self.recovery is not None:
            high = max(high, (self.recovery["need"], self.recovery["need_term"]))
        state = (*high, self._meta.get("term", 0), self._meta.get("vote"))
        if state == self._mark_written or not self.durability_mark:
            return False
        if self._mark_fd < 0:
            self._mark_fd = self._io(os.open, self.mark_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._io(fsync_dir, self.mark_path)
        self._mark_seq += 1
        slot, offset = mark_slot(self._mark_seq, state[2], state[3], *high)
        self._io(os.pwrite, self._mark_fd, slot, offset)
        self._mark_written = state
        return True

    def _check_lost(self, mark: dict | None, snapshot_last) -> None:
        """Compare what is on disk with what this node made durable (module
        docstring); enter recovery if acknowledged entries are missing."""
        first = self._entries[0][1:] if self._entries else None
        last = self._entries[-1][1:] if self._entries else None
        loss = assess_loss(first, last, snapshot_last, mark)
        if loss is None:
            return
        reasons = []
        if loss["gap"]:
            what = "the snapshot" if snapshot_last is None else "a journal segment"
            reasons.append(f"entries {loss['gap'][0]}..{loss['gap'][1]} are missing ({what} was "
                           f"lost; {segment_path(self.path, self._segs[0].seq)} starts at "
                           f"{first[0]})")
        else:
            where = segment_path(self.path, self._segs[-1].seq) if self._segs else self.path
            reasons.append(f"the log ends at entry {loss['end']} ({where}) but this node had "
                           f"made entries up to {loss['need']} durable ({self.mark_path}): its "
                           "tail was damaged or a segment deleted")
        self.recovery = {"need": loss["need"], "need_term": loss["need_term"],
                         "reason": "; ".join(reasons)}
        log.error("journal %s: this node lost acknowledged data: %s. It will not campaign or "
                  "serve, and votes only for a log that covers entry %d, until its leader has "
                  "sent entries up to %d.", self.path, self.recovery["reason"], loss["need"],
                  loss["need"])
        if loss["gap"]:  # entries after a gap cannot be applied: fetch them again
            self.clear()
            self.sync()

    def _restore_term(self, mark: dict | None, snapshot_last) -> None:
        """Term and vote from the term/vote file, else the mark, else (both
        lost) the log's last term with an unknown vote."""
        meta = self._meta if "term" in self._meta else None
        last_term = max([e[2] for e in self._entries[-1:]]
                        + [snapshot_last[1] if snapshot_last not in (UNKNOWN, None) else 0])
        new = restore_term(meta, mark, last_term)
        if new is None:
            return
        if new["vote"] == LOST_VOTE:
            log.warning("journal %s: term/vote file %s and no durability mark: taking term %d "
                        "with an unknown vote (no vote in that term)", self.path,
                        self._meta_state, new["term"])
        else:
            log.warning("journal %s: term/vote file %s; term %d and vote %r restored from the "
                        "durability mark", self.path,
                        self._meta_state if meta is None else "behind the mark",
                        new["term"], new["vote"])
        self._meta = new
        self._store_meta()

    def _io(self, fn, *args):
        """Run one write or sync; report a failure once, then stop (or raise)."""
        try:
            return fn(*args)
        except OSError as exc:
            if self.failed is None:
                self.failed = exc
                log.critical("journal %s: storage failure: %s", self.path, exc)
                if self.on_failure is not None:
                    self.on_failure(exc)
            raise StorageFailed(exc.errno, f"{self.path}: {exc.strerror or exc}") from exc

    def _load_commit(self) -> int:
        """The advisory commit index: its own file, else an older journal's meta, else 1."""
        legacy = self._meta.pop("commit", 1)
        try:
            with open(self.commit_path, "rb") as f:
                raw = f.read(COMMIT.size)
        except FileNotFoundError:
            return legacy
        value = parse_commit(raw)
        if value is not None:
            return value
        # Torn by a crash (it is written without a sync): any lower value is
        # safe, the entries are applied again as the leader confirms them.
        log.warning("%s: unreadable commit index, starting from %d", self.commit_path, legacy)
        return legacy

    def _store_commit(self) -> None:
        if self._commit_fd < 0:
            self._commit_fd = self._io(os.open, self.commit_path, os.O_WRONLY | os.O_CREAT,
                                       0o600)
        self._io(os.pwrite, self._commit_fd, pack_commit(self._commit), 0)
        self._commit_dirty = False

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

    # ------------------------------------------- pysyncobj Journal API
    def add(self, command: bytes, idx: int, term: int) -> None:
        if self.RAFT_CONFORMANT_TRUNCATION:
            action, pos = raft_add_position(self._entries, idx, term)
            if action == "skip":
                return
            if action == "cut":
                self._truncate(pos)
        rec = encode_record(bytes(command), idx, term)
        seg = self._segs[-1]
        if seg.first is not None and seg.end + len(rec) > self.SEGMENT_BYTES:
            seg = self._roll()
        if seg.end + len(rec) > seg.alloc:
            self._reserve(seg, len(rec))
        view, pos = memoryview(rec), seg.end
        while view:
            n = self._io(os.pwrite, seg.fd, view, pos)
            view, pos = view[n:], pos + n
        if seg.first is None:
            seg.first = idx
        self._entries.append((command, idx, term))
        self._offsets.append(seg.end)
        seg.end += len(rec)
        self._dirty = True
        if self._spare is None and seg.end > self.SEGMENT_BYTES // 2:
            self._spare = _helper().submit(self._create_segment, seg.seq + 1)
        if self.trace:
            self.trace("append", idx, term)

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

    def sync(self) -> None:
        """Make every written entry durable (called before each send), then the
        mark that says so."""
        if self._dirty:
            # The mark's sync runs beside the journal's (one more disk flush in
            # parallel, not in series).  Should the journal's fail or the node
            # crash in between, the mark claims entries that may be missing:
            # the node then fetches them again (the safe direction).
            end = self._entries[-1][1] if self._entries else 0
            t0 = time.perf_counter()
            marked = self._write_mark(end)
            mark_sync = _mark_syncer().submit(os.fdatasync, self._mark_fd) if marked else None
            self._io(os.fdatasync, self._segs[-1].fd)  # older segments were synced when sealed
            if mark_sync is not None:
                self._io(mark_sync.result)
            if self.on_sync is not None:
                self.on_sync(time.perf_counter() - t0)
            self._dirty = False
            self.syncs += 1
            self._synced_idx = end
            if self.recovery is not None and self._synced_idx >= self.recovery["need"]:
                log.warning("journal %s: recovered: the log holds entries up to %d again",
                            self.path, self._synced_idx)
                self.recovery = None
            if self.trace:
                self.trace("sync", self._synced_idx)

    @property
    def synced_index(self) -> int:
        """Index of the last entry known to be on disk."""
        return self._synced_idx

    def _drop_segments(self, dead: list[Segment]) -> None:
        """Delete whole segments now, durably (truncation, clear, compaction)."""
        for s in dead:
            os.close(s.fd)
            os.unlink(s.path)
        if dead:
            fsync_dir(self.path)

    def clear(self) -> None:
        self._drop_spare()
        self._drop_segments(self._segs[:-1])
        del self._segs[:-1]
        seg = self._segs[0]
        os.ftruncate(seg.fd, len(HEADER))
        seg.end = seg.alloc = len(HEADER)
        seg.first = None
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
        first_cut = self._entries[entryFrom][1]
        if self.applied is not None and first_cut <= self.applied():
            # A committed entry never conflicts (Raft's log matching): if one is
            # to be cut, this node's state may already have diverged.  Stop.
            log.critical("journal %s: asked to truncate entry %d, at or below the applied "
                         "index %d: refusing (the state machine may have diverged); stopping "
                         "the node", self.path, first_cut, self.applied())
            logging.shutdown()
            os._exit(70)
        k = self._segment_of(first_cut)
        # later segments go first, durably: a cut entry must not come back
        self._drop_spare()
        self._drop_segments(self._segs[k + 1:])
        del self._segs[k + 1:]
        seg, cut = self._segs[k], self._offsets[entryFrom]
        self._io(os.ftruncate, seg.fd, cut)  # also drops the reserve: no stale record survives
        seg.end = seg.alloc = cut
        if cut == len(HEADER):
            seg.first = None
        if self.trace and self._entries[entryFrom:]:
            self.trace("truncate", self._entries[entryFrom][1])
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Log compaction: drop entries before ``entryTo`` (a snapshot covers them).

        Nothing is rewritten: the segments that hold only dropped entries are
        deleted on a helper thread, after a directory sync that makes durable
        the rename pysyncobj did to put the snapshot in place; oldest first,
        each deletion synced, so a crash leaves a log without a gap (a restart
        drops the entries the snapshot covers again, see the replica's
        ``_align_journal``).
        """
        if entryTo >= len(self._entries):
            # Never compact to an empty log: pysyncobj needs its first entry.
            log.error("journal %s: compaction past the log end (%d >= %d) skipped",
                      self.path, entryTo, len(self._entries))
            return
        if entryTo <= 0:
            return
        first = self._entries[entryTo][1]
        k = self._segment_of(first)
        dead = self._segs[:k]
        del self._segs[:k]
        # Freeing ~50,000 entries at once took 10-13 ms of the Raft thread:
        # the helper thread frees them, a slice at a time (see _free).
        dropped = [self._entries, self._offsets]  # no per-entry work here:
        self._entries = self._entries[entryTo:]  # only the kept ones are copied
        self._offsets = self._offsets[entryTo:]
        self._retiring = [f for f in self._retiring if not f.done()]
        self._retiring.append(_helper().submit(_free, dropped))
        if dead:
            self._retiring.append(_helper().submit(self._retire, dead))
        if self.trace:
            self.trace("compact", first)

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

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        for fut in self._retiring:
            fut.result()
        self._retiring = []
        self._drop_spare()
        if self._segs and self._segs[-1].fd >= 0:
            self.sync()
            seg = self._segs[-1]
            if seg.alloc > seg.end:  # a clean close leaves no reserve behind
                os.ftruncate(seg.fd, seg.end)
                os.fdatasync(seg.fd)
            if self._meta_dirty:
                self._store_meta()
            if self._commit_dirty:
                self._store_commit()
            for s in self._segs:
                os.close(s.fd)
                s.fd = -1
        if self._commit_fd >= 0:
            os.close(self._commit_fd)
            self._commit_fd = -1
        if self._mark_fd >= 0:
            os.close(self._mark_fd)
            self._mark_fd = -1

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if self._commit != raftCommitIndex:
            self._commit = raftCommitIndex
            self._commit_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId) -> None:
        self._meta["term"] = term
        self._meta["vote"] = votedForNodeId
        self._store_meta()  # durable (file + directory) before pysyncobj sends
        self._store_mark()  # and its second copy
        if self.trace:
            self.trace("term", term, votedForNodeId)

    def getCurrentTerm(self) -> int:
        return self._meta.get("term", 0)

    def getVotedForNodeId(self):
        return self._meta.get("vote")

    def onOneSecondTimer(self) -> None:
        # Only ever after the tick's sync (the replica's _onTick): the index
        # written never runs ahead of the entries on disk.
        if self._commit_dirty:
            self._store_commit()
        if self._meta_dirty:
            self._store_meta()


def _raise(exc: OSError):
    raise exc
