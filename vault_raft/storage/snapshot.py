"""Snapshot files: ``b"VRS1"``, a msgpack map, and the SHA-256 of that map.

The map holds ``v`` (1), the state machine's blob (``state``), the last two
log entries the snapshot covers (``entries``), the cluster's addresses
(``cluster``) and, when there is one, the membership (``membership``).
Nothing in a snapshot is unpickled.  The replica writes and reads them
through pysyncobj's serializer hooks (:mod:`vault_raft.raft.snapshots`).
"""

from __future__ import annotations

import hashlib

import msgpack

from vault_raft.storage.errors import JournalCorrupt

SNAPSHOT_MAGIC = b"VRS1"


def snapshot_bytes(state_blob: bytes, entries: list, cluster: list,
                   membership: dict | None = None) -> bytes:
    """A snapshot file's bytes: magic, msgpack body, SHA-256 of the body."""
    snap = {"v": 1, "state": state_blob, "entries": entries, "cluster": cluster}
    if membership is not None:
        snap["membership"] = membership
    body = msgpack.packb(snap, use_bin_type=True)
    return SNAPSHOT_MAGIC + body + hashlib.sha256(body).digest()


def read_snapshot(path: str) -> dict:
    """Read and verify a snapshot file's envelope; raises JournalCorrupt if damaged."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] != SNAPSHOT_MAGIC or len(raw) < 36:
        raise JournalCorrupt(f"{path}: not a vault-raft snapshot")
    body, digest = raw[4:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise JournalCorrupt(f"{path}: snapshot checksum mismatch")
    snap = msgpack.unpackb(body, raw=False)
    if not isinstance(snap, dict) or snap.get("v") != 1 or not isinstance(snap.get("state"), bytes):
        raise JournalCorrupt(f"{path}: unknown snapshot version")
    return snap
