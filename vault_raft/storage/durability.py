"""What a node made durable, in files beside the journal, and the rules that
compare it with the log.

* The **term/vote file** (``path.meta``): a CRC32 and a msgpack map, written
  atomically (file and directory synced) before pysyncobj sends a vote.
* The **commit index** (``path.commit``): advisory (Raft does not need it
  durable; a stale one is only lower), written in place without a sync: a
  u64 and the CRC32 of its 8 bytes.
* The **durability mark** (``path.mark``): the last synced entry (index and
  term) and the term and vote, in two checksummed 256-byte slots written
  alternately in place; the newest intact slot counts.

:func:`assess_loss` and :func:`restore_term` are pure: the durable journal
and the simulation's in-memory journal both use them; :class:`DurableState`
is the journal's side of these files.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from vault_raft.storage.files import atomic_write, fsync_dir
from vault_raft.storage.segments import segment_path

log = logging.getLogger("vault_raft.journal")

MARK_SLOT = 256
MARK_VERSION = 1
COMMIT = struct.Struct("<QI")  # commit index, crc32 of its 8 bytes

#: The vote of a node that lost both its term/vote file and its mark: it may
#: have voted in its log's last term, so it must not vote again in that term.
LOST_VOTE = "?lost"
UNKNOWN = object()  # snapshot_last not given: the journal alone, no gap check


# ------------------------------------------------------------ term and vote

def pack_meta(meta: dict) -> bytes:
    body = msgpack.packb(meta, use_bin_type=True)
    return struct.pack("<I", zlib.crc32(body)) + body


def parse_meta(raw: bytes) -> dict:
    """The term/vote map; ValueError (or a msgpack error) if damaged."""
    if len(raw) < 4 or zlib.crc32(raw[4:]) != struct.unpack("<I", raw[:4])[0]:
        raise ValueError("checksum mismatch")
    meta = msgpack.unpackb(raw[4:], raw=False)
    if not isinstance(meta, dict) or not isinstance(meta.get("term", 0), int):
        raise ValueError("not a term/vote map")
    return meta


META_ERRORS = (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError)


# ------------------------------------------------------------- commit index

def pack_commit(value: int) -> bytes:
    raw = struct.pack("<Q", value)
    return raw + struct.pack("<I", zlib.crc32(raw))


def parse_commit(raw: bytes) -> int | None:
    """The commit index, or None if the file is torn."""
    if len(raw) == COMMIT.size:
        value, crc = COMMIT.unpack(raw)
        if zlib.crc32(raw[:8]) == crc:
            return value
    return None


# ---------------------------------------------------------- durability mark

def parse_mark(raw: bytes) -> dict | None:
    """The newest intact slot of a mark file's bytes, or None."""
    best = None
    for off in (0, MARK_SLOT):
        slot = raw[off:off + MARK_SLOT]
        if len(slot) < 8:
            continue
        length, crc = struct.unpack_from("<II", slot)
        body = slot[8:8 + length]
        if length > MARK_SLOT - 8 or len(body) != length or zlib.crc32(body) != crc:
            continue
        try:
            v, seq, term, vote, high, high_term = msgpack.unpackb(body, raw=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            continue
        if v == MARK_VERSION and (best is None or seq > best["seq"]):
            best = {"seq": seq, "term": term, "vote": vote, "high": high,
                    "high_term": high_term}
    return best


def mark_slot(seq: int, term: int, vote, high: int, high_term: int) -> tuple[bytes, int]:
    """One slot's bytes and the offset it goes to (slots alternate by ``seq``)."""
    body = msgpack.packb([MARK_VERSION, seq, term, vote, high, high_term], use_bin_type=True)
    rec = struct.pack("<II", len(body), zlib.crc32(body)) + body
    return rec.ljust(MARK_SLOT, b"\0"), (seq % 2) * MARK_SLOT


# --------------------------------------------- what a node lost (pure rules)

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


def assess_loss(first: tuple[int, int] | None, last: tuple[int, int] | None,
                snapshot_last, mark: dict | None) -> dict | None:
    """Compare a log (its ``first`` and ``last`` (index, term), None if empty)
    and the snapshot's last entry with the durability mark.  None if nothing
    acknowledged is missing; else ``{"need", "need_term", "gap", "end"}``:
    entries up to ``need`` (of term ``need_term``) must come back from a
    leader; ``gap`` is the (from, to) range missing before the log (whose
    entries then cannot be applied), ``end`` where the usable log ends."""
    high = (mark["high"], mark["high_term"]) if mark else (0, 0)
    gap = None
    snap_idx = snapshot_last[0] if snapshot_last not in (UNKNOWN, None) else 0
    if snapshot_last is not UNKNOWN and first is not None and first[0] > snap_idx + 1:
        gap = (snap_idx + 1, first[0] - 1)
        if last is not None:  # (it is: the log has a first entry)
            high = max(high, last)
    end = snap_idx if gap else max(last[0] if last else 0, snap_idx)
    if gap is None and high[0] <= end:
        return None
    return {"need": high[0], "need_term": high[1], "gap": gap, "end": end}


def restore_term(meta: dict | None, mark: dict | None, last_term: int) -> dict | None:
    """Term and vote to use when they differ from ``meta`` (the term/vote
    file's, None if lost): the mark's copy if it is ahead, or (both lost) the
    log's last term with :data:`LOST_VOTE`; None to keep ``meta``."""
    def rank(term, vote):
        return (term, vote is not None)
    if mark is not None and (mark["term"], mark["vote"]) != (0, None) and (
            meta is None or rank(mark["term"], mark["vote"]) > rank(meta["term"],
                                                                      meta.get("vote"))):
        return {"term": mark["term"], "vote": mark["vote"]}
    if meta is None and mark is None and last_term > 0:
        return {"term": last_term, "vote": LOST_VOTE}
    return None


class DurableState:
    """The term/vote, commit index and durability mark of a
    :class:`~vault_raft.storage.journal.DurableJournal` (a mixin: it uses the
    journal's paths, entries, segments and ``_io``), and the part of
    pysyncobj's journal interface that reads and writes them."""

    path: str
    meta_path: str
    commit_path: str
    mark_path: str
    trace: Callable[..., None] | None
    durability_mark: bool
    recovery: dict | None
    _entries: list[tuple[bytes, int, int]]
    _segs: list
    _synced_idx: int
    _meta: dict
    _meta_state: str
    _meta_dirty: bool
    _mark_fd: int
    _mark_seq: int
    _mark_written: tuple | None
    _commit: int
    _commit_fd: int
    _commit_dirty: bool
    if TYPE_CHECKING:
        def _io(self, fn: Callable[..., Any], *args: Any) -> Any: ...

        def sync(self) -> None: ...

        def clear(self) -> None: ...

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
                           f"{first[0] if first else '?'})")
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
