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
and the simulation's in-memory journal both use them.
"""

from __future__ import annotations

import struct
import zlib

import msgpack

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
