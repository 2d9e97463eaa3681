"""Fleet-key bundles: what a client verifies before it trusts a fleet's keys.

A **bundle** lists a fleet's public keys, endpoints, epoch and validity window,
and the hash of the previous bundle.  It is canonically encoded (msgpack of a
fixed-order array) and

1. signed by the **operator** (Ed25519);
2. counter-signed by an independent **witness**: the witness signs a
   *statement* ``[version, namespace (fleet id), timestamp, epoch, digest]``
   (the shape of the key-transparency auditor statements Cloudflare signs for
   Meta), and appends the statement to its append-only Merkle log (RFC 9162,
   :mod:`.merkle`); the witness also signs tree heads ``[size, root, timestamp]``.

A client is configured with the operator's and the witness's public keys only.
:func:`verify` checks, in this order, and raises a specific
:class:`TrustError` subclass on the first failure: both signatures, that the
statement is about this bundle, the validity window, that the statement is in
the witness's log (inclusion proof under a signed tree head), that this tree
head is consistent with the last one the client saw (no fork, no rollback), and
that the bundle is not older than one it already accepted (no replay).  Only
then may the client send anything derived from a recovery code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import merkle

BUNDLE_V = "vault-raft bundle v1"
STATEMENT_V = 1
STH_V = "vault-raft tree head v1"


class TrustError(Exception):
    """The fleet could not be authenticated; nothing may be sent to it."""


class BundleMalformed(TrustError):
    pass


class BadOperatorSignature(TrustError):
    pass


class BadWitnessSignature(TrustError):
    pass


class BundleExpired(TrustError):
    pass


class NotInLog(TrustError):
    pass


class ForkedLog(TrustError):
    pass


class ReplayedBundle(TrustError):
    pass


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@dataclass(frozen=True)
class Bundle:
    fleet_id: str
    epoch: int
    keys: dict  # name -> public key bytes (opaque_server, enroll, ...)
    endpoints: tuple
    not_before: int  # unix seconds
    not_after: int
    prev_hash: bytes = bytes(32)

    def canonical(self) -> bytes:
        return _pack([BUNDLE_V, self.fleet_id, self.epoch, sorted(self.keys.items()),
                      list(self.endpoints), self.not_before, self.not_after, self.prev_hash])

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    @classmethod
    def from_canonical(cls, data: bytes) -> "Bundle":
        try:
            v, fid, epoch, keys, eps, nb, na, prev = msgpack.unpackb(data, raw=False)
            if v != BUNDLE_V or not isinstance(epoch, int) or epoch < 1:
                raise ValueError("version/epoch")
            b = cls(str(fid), epoch, {str(k): bytes(x) for k, x in keys}, tuple(map(str, eps)),
                    int(nb), int(na), bytes(prev))
            if b.canonical() != data:
                raise ValueError("not canonical")
            return b
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise BundleMalformed(f"bundle does not decode: {exc}") from None


def statement(bundle: Bundle, timestamp: int) -> bytes:
    return _pack([STATEMENT_V, bundle.fleet_id, timestamp, bundle.epoch, bundle.digest])


def tree_head(size: int, root: bytes, timestamp: int) -> bytes:
    return _pack([STH_V, size, root, timestamp])


@dataclass
class SignedBundle:
    bundle: bytes  # canonical bundle
    operator_sig: bytes
    statement: bytes
    witness_sig: bytes  # over the statement
    leaf_index: int
    inclusion: list  # inclusion proof of hash_leaf(statement)
    sth: bytes  # tree_head(...)
    sth_sig: bytes
    consistency: list = field(default_factory=list)  # from the client's last size to sth size


def _verify_sig(pk: bytes, sig: bytes, msg: bytes, err: type[TrustError], what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
    except (InvalidSignature, ValueError, TypeError):
        raise err(f"{what} signature does not verify") from None


@dataclass
class TrustState:
    """What a client remembers between runs (kept on disk)."""
    tree_size: int = 0
    tree_root: bytes = merkle.EMPTY_ROOT
    epochs: dict = field(default_factory=dict)  # fleet id -> [epoch, digest hex]

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"tree_size": self.tree_size, "tree_root": self.tree_root.hex(),
                       "epochs": self.epochs}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "TrustState":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            return cls()
        return cls(int(d["tree_size"]), bytes.fromhex(d["tree_root"]), dict(d["epochs"]))


def verify(sb: SignedBundle, operator_pk: bytes, witness_pk: bytes, state: TrustState,
           now: int) -> Bundle:
    """Verify a signed bundle; returns the bundle and updates ``state`` on success."""
    bundle = Bundle.from_canonical(sb.bundle)
    _verify_sig(operator_pk, sb.operator_sig, sb.bundle, BadOperatorSignature, "operator")
    _verify_sig(witness_pk, sb.witness_sig, sb.statement, BadWitnessSignature, "witness statement")
    try:
        v, ns, ts, epoch, digest = msgpack.unpackb(sb.statement, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
        raise BundleMalformed("witness statement does not decode") from None
    if (v, ns, epoch, digest) != (STATEMENT_V, bundle.fleet_id, bundle.epoch, bundle.digest):
        raise BadWitnessSignature("the witness statement is about another bundle")
    if not bundle.not_before <= now <= bundle.not_after:
        raise BundleExpired(f"bundle valid {bundle.not_before}..{bundle.not_after}, now {now}")
    _verify_sig(witness_pk, sb.sth_sig, sb.sth, BadWitnessSignature, "witness tree head")
    try:
        tag, size, root, _ = msgpack.unpackb(sb.sth, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
        raise BundleMalformed("tree head does not decode") from None
    if tag != STH_V or not isinstance(size, int) or not isinstance(root, bytes):
        raise BundleMalformed("tree head has the wrong shape")
    if not merkle.verify_inclusion(merkle.hash_leaf(sb.statement), sb.leaf_index, size,
                                   list(sb.inclusion), root):
        raise NotInLog("the witness's log does not include this bundle's statement")
    if size < state.tree_size:
        raise ForkedLog(f"tree head of size {size} is older than the {state.tree_size} "
                        "already seen (rollback)")
    if state.tree_size and not merkle.verify_consistency(state.tree_size, size, state.tree_root,
                                                         root, list(sb.consistency)):
        raise ForkedLog("the witness's log is not consistent with the tree head seen before")
    seen = state.epochs.get(bundle.fleet_id)
    if seen is not None:
        if bundle.epoch < seen[0]:
            raise ReplayedBundle(f"epoch {bundle.epoch} is older than epoch {seen[0]} "
                                 "already accepted")
        if bundle.epoch == seen[0] and bundle.digest.hex() != seen[1]:
            raise ForkedLog(f"two different bundles for epoch {bundle.epoch}")
    state.tree_size, state.tree_root = size, root
    state.epochs[bundle.fleet_id] = [bundle.epoch, bundle.digest.hex()]
    return bundle


def new_signing_key() -> tuple[Ed25519PrivateKey, bytes]:
    sk = Ed25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes_raw()
