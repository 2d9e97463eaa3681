"""Storage faults for a stopped node: one file of its data directory damaged.

Used by the ``disk`` nemesis of ``vault-raft chaos`` and by the storage-fault
tests.  Each fault touches exactly one file, as the fault model in
docs/design.md assumes:

* ``cut``: the journal's last record cut short (a synced, maybe acknowledged
  entry damaged at the log's end);
* ``flip``: one bit flipped inside the journal's last record;
* ``last-segment``: the journal's last segment file deleted (falls back to
  ``cut`` when there is only one);
* ``meta``: the term/vote file deleted;
* ``snapshot``: the snapshot deleted (falls back to ``meta`` when there is none).
"""

from __future__ import annotations

import os
import random

from vault_raft.storage import segments as SG

KINDS = ("cut", "flip", "last-segment", "meta", "snapshot")


def journal_path(node_dir: str) -> str:
    return os.path.join(node_dir, "data", "raft.journal")


def records(path: str) -> list[tuple[int, int, int]]:
    """(offset, length, index) of each intact record in one segment file."""
    data = open(path, "rb").read()
    out, off = [], len(SG.HEADER)
    while off + SG.REC.size <= len(data):
        length, _, idx, _ = SG.REC.unpack_from(data, off)
        if length < 16 or off + 8 + length > len(data):
            break
        out.append((off, 8 + length, idx))
        off += 8 + length
    return out


def _last_segment(node_dir: str) -> str:
    path = journal_path(node_dir)
    return SG.segment_path(path, SG.list_segments(path)[-1])


def cut_at(node_dir: str, idx: int | None = None) -> str:
    """Cut the journal inside the record of entry ``idx`` (default: the last
    record), dropping everything after it."""
    seg = _last_segment(node_dir)
    recs = records(seg)
    if not recs:
        raise ValueError(f"{seg} holds no record to cut")
    target = recs[-1] if idx is None else next((r for r in recs if r[2] >= idx), None)
    if target is None:
        raise ValueError(f"entry {idx} is not in {seg}")
    os.truncate(seg, target[0] + 11)
    return f"cut {os.path.basename(seg)} inside entry {target[2]}"


def damage(node_dir: str, kind: str, rng: random.Random) -> str:
    """Damage one file of a stopped node; returns what was done."""
    data = os.path.join(node_dir, "data")
    path = journal_path(node_dir)
    if kind == "last-segment":
        seqs = SG.list_segments(path)
        if len(seqs) > 1:
            os.unlink(SG.segment_path(path, seqs[-1]))
            return f"deleted {os.path.basename(SG.segment_path(path, seqs[-1]))}"
        kind = "cut"
    if kind == "snapshot":
        snap = os.path.join(data, "snapshot.bin")
        if os.path.exists(snap):
            os.unlink(snap)
            return "deleted snapshot.bin"
        kind = "meta"
    if kind == "meta":
        meta = path + ".meta"
        if os.path.exists(meta):
            os.unlink(meta)
            return "deleted raft.journal.meta"
        kind = "cut"
    if kind == "flip":
        seg = _last_segment(node_dir)
        recs = records(seg)
        if recs:
            off, length, idx = recs[-1]
            pos = off + 8 + rng.randrange(length - 8)
            with open(seg, "r+b") as f:
                f.seek(pos)
                b = f.read(1)
                f.seek(pos)
                f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
            return f"flipped a bit of entry {idx} in {os.path.basename(seg)}"
        kind = "cut"
    return cut_at(node_dir)
