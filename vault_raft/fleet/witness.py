"""The witness: an independent co-signer with an append-only Merkle log.

It co-signs a fleet-key bundle only if the bundle keeps the rules, per
namespace: epochs rise by exactly one, a digest is never reused, an epoch is
never published twice, and every epoch is signed by the operator key that
published epoch 1 of the namespace (so nobody else can burn its epochs).  Every co-signed statement is appended to an RFC
9162 log (:mod:`.merkle`).  The log is a file of length-prefixed, checksummed
records, each appended and fsynced before the co-signature is returned.  On
start the witness replays the file and refuses to run on a damaged one rather
than rewrite history: a log that loses entries would let the operator fork it.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import bundle as B
from . import merkle
from ..replica.journal import fsync_dir

_REC = struct.Struct("<II")  # length, crc32


class WitnessRefused(Exception):
    """The bundle breaks a co-signing rule (the message says which)."""


class WitnessLogCorrupt(Exception):
    pass


class WitnessLog:
    def __init__(self, path: str, signing_key: Ed25519PrivateKey):
        self.path = path
        self.sk = signing_key
        self.public_key = signing_key.public_key().public_bytes_raw()
        self.statements: list[bytes] = []
        self.leaves: list[bytes] = []
        self.fleets: dict[str, dict] = {}  # namespace -> {"epoch", "digests", "operator"}
        self._lock = threading.Lock()
        self._load()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fsync_dir(path)

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        off = 0
        while off < len(data):
            if len(data) - off < _REC.size:
                raise WitnessLogCorrupt(f"{self.path}: truncated record at {off}")
            length, crc = _REC.unpack_from(data, off)
            body = data[off + _REC.size:off + _REC.size + length]
            if len(body) != length or zlib.crc32(body) != crc:
                raise WitnessLogCorrupt(f"{self.path}: damaged record at {off}; refusing to "
                                        "start (the log must never lose entries)")
            self._apply(body)
            off += _REC.size + length

    def _apply(self, rec: bytes) -> None:
        try:
            st, operator_pk = msgpack.unpackb(rec, raw=False)
            _, ns, _, epoch, digest = msgpack.unpackb(st, raw=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            raise WitnessLogCorrupt(f"{self.path}: a record does not decode") from None
        f = self.fleets.setdefault(ns, {"epoch": 0, "digests": set(), "operator": operator_pk})
        f["epoch"] = epoch
        f["digests"].add(bytes(digest))
        self.statements.append(st)
        self.leaves.append(merkle.hash_leaf(st))

    def cosign(self, bundle_bytes: bytes, operator_sig: bytes, operator_pk: bytes,
               timestamp: int) -> tuple[bytes, bytes, int]:
        """Check the rules, log the statement durably, return (statement, signature, index)."""
        bundle = B.Bundle.from_canonical(bundle_bytes)
        B._verify_sig(operator_pk, operator_sig, bundle_bytes, B.BadOperatorSignature, "operator")
        with self._lock:
            f = self.fleets.get(bundle.namespace, {"epoch": 0, "digests": set(),
                                                   "operator": operator_pk})
            if f["operator"] != operator_pk:
                raise WitnessRefused(f"namespace {bundle.namespace} belongs to another "
                                     "operator key")
            if bundle.digest in f["digests"]:
                # the same bundle again (a retry after a lost answer): same answer
                for i, st in enumerate(self.statements):
                    if self._about(st) == (bundle.namespace, bundle.epoch, bundle.digest):
                        return st, self.sk.sign(st), i
                raise WitnessRefused("this bundle digest was already published")
            if bundle.epoch <= f["epoch"]:
                raise WitnessRefused(f"epoch {bundle.epoch} was already published for "
                                     f"{bundle.namespace}")
            if bundle.epoch != f["epoch"] + 1:
                raise WitnessRefused(f"epochs rise by exactly one: expected {f['epoch'] + 1}, "
                                     f"got {bundle.epoch}")
            st = B.statement(bundle, timestamp)
            body = msgpack.packb([st, operator_pk], use_bin_type=True)
            os.write(self._fd, _REC.pack(len(body), zlib.crc32(body)) + body)
            os.fsync(self._fd)  # durable before anyone sees the co-signature
            self._apply(body)
            return st, self.sk.sign(st), len(self.leaves) - 1

    @staticmethod
    def _about(st: bytes) -> tuple:
        _, ns, _, epoch, digest = msgpack.unpackb(st, raw=False)
        return ns, epoch, bytes(digest)

    def tree_head(self, timestamp: int) -> tuple[bytes, bytes]:
        with self._lock:
            sth = B.tree_head(len(self.leaves), merkle.root(self.leaves), timestamp)
        return sth, self.sk.sign(sth)

    def page(self, start: int, limit: int, timestamp: int) -> tuple[list[bytes], bytes, bytes]:
        """Statements ``start..start+limit`` and a signed tree head for the size
        they end at (so a reader can check them against it)."""
        with self._lock:
            end = min(len(self.leaves), start + limit) if start < len(self.leaves) \
                else len(self.leaves)
            sth = B.tree_head(end, merkle.root(self.leaves[:end]), timestamp)
            return self.statements[start:end], sth, self.sk.sign(sth)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return merkle.inclusion_proof(self.leaves[:size], index)

    def consistency(self, first: int, size: int) -> list[bytes]:
        with self._lock:
            return merkle.consistency_proof(self.leaves[:size], first) if first else []

    def close(self) -> None:
        os.close(self._fd)
