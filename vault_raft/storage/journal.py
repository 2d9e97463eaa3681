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

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from vault_raft.storage.durability import UNKNOWN, DurableState, raft_add_position
from vault_raft.storage.errors import StorageFailed
from vault_raft.storage.segments import HEADER, Segment, SegmentFiles, encode_record

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


class DurableJournal(SegmentFiles, DurableState):
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

    def sync(self) -> None:
        """Make every written entry durable, with the mark that says so (synced
        beside the journal, see below).  The replica calls it before it sends an
        acknowledgement or a vote, and for the leader's own appends at each tick
        and after each append round (:mod:`vault_raft.raft.replica`)."""
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
        dropped: list[list] = [self._entries, self._offsets]  # no per-entry work here:
        self._entries = self._entries[entryTo:]  # only the kept ones are copied
        self._offsets = self._offsets[entryTo:]
        self._retiring = [f for f in self._retiring if not f.done()]
        self._retiring.append(_helper().submit(_free, dropped))
        if dead:
            self._retiring.append(_helper().submit(self._retire, dead))
        if self.trace:
            self.trace("compact", first)

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
