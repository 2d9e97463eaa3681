"""Fleet-key bundles: what a client verifies before it trusts a fleet's keys.

A **bundle** lists a fleet's public keys, endpoints, epoch and validity window,
and the hash of the previous bundle.  It is canonically encoded (msgpack of a
fixed-order array) and

1. signed by the **operator** (Ed25519);
2. counter-signed by an independent **witness**: the witness signs a
   *statement* ``[version, namespace (fleet id), timestamp, epoch, digest]``
   (the shape of the key-transparency auditor statements Cloudflare signs for
   Meta), and appends the statement to its append-only Merkle log (RFC 9162,
   :mod:`.merkle`); the witness also signs tree heads ``[size, root, timestamp,
   namespace, epoch, digest]``: the log's root, and the namespace's newest bundle.

A client is configured with the operator's and the witness's public keys only.
:func:`verify` checks, in this order, and raises a specific
:class:`TrustError` subclass on the first failure: both signatures, that the
statement is about this bundle, the validity window, that the statement is in
the witness's log (inclusion proof under a signed tree head), that this tree
head is consistent with the last one the client saw (no fork, no rollback),
that the bundle is not older than one it already accepted (no replay), and that
a recent tree head names it as its namespace's newest (no superseded bundle,
even for a client with no saved state).  Only then may the client send
anything derived from a recovery code.

Why one module: the encoding and the verification of one format.  The checks
above depend on each other's order (a signature before the statement it
covers, inclusion before freshness), and the byte layout they verify is built
a few lines away; splitting them would make that order harder to audit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from vault_raft.errors import EXIT_UNTRUSTED, VaultRaftError
from vault_raft.storage.files import atomic_write
from vault_raft.trust import merkle

BUNDLE_V1 = "vault-raft bundle v1"  # fleet entries without a channel CA (still verify)
BUNDLE_V = "vault-raft bundle v2"  # every fleet entry pins its API channel (its CA)
MAX_CHANNEL_CA = 4096
STATEMENT_V = 1
STH_V1 = "vault-raft tree head v1"  # [tag, size, root, timestamp]: says nothing of freshness
# [tag, size, root, timestamp, namespace, epoch, digest]: also the namespace's newest bundle
STH_V = "vault-raft tree head v2"
MAX_NAMESPACE = 128  # bytes of UTF-8
MAX_HEAD_AGE = 6 * 3600  # default: how old a tree head a client accepts (client.json)


class TrustError(VaultRaftError):
    """The fleet could not be authenticated; nothing may be sent to it."""

    exit_code = EXIT_UNTRUSTED


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


class SupersededBundle(ReplayedBundle):
    """The witness's tree head names a newer epoch of the namespace than the
    bundle served (a node of a retired fleet, or someone replaying an old
    bundle to a client that has none yet)."""


class StaleTreeHead(TrustError):
    """The tree head cannot vouch that the bundle is the namespace's newest:
    it is older than the client accepts, speaks for another namespace, or is a
    v1 head (which carries no epoch)."""


class LaggingLog(ForkedLog):
    """A tree head smaller than the one the client saw, without a proof that
    it is a prefix of it: a node whose copy of the log lags (or a rollback).
    The client asks another node; only if none gives a consistent view is it
    reported as a fork."""


class UnpinnedChannel(TrustError):
    """The verified bundle names no channel key for the fleet (a v1 bundle): the
    client will not talk to it over a channel it cannot authenticate."""


class WrongChannelKey(TrustError):
    """A node's TLS certificate does not chain to the fleet's pinned CA or names
    another fleet; nothing was sent to it."""


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@dataclass(frozen=True)
class FleetEntry:
    """One fleet named by a bundle: what a client needs to use it.

    ``role`` is ``"current"`` (enroll and recover here) or ``"retiring"``
    (recover only, then move to the current fleet: see ``docs/trust.md``).
    ``deployment`` is the SHA-256 of the fleet's deployment record (zero if
    none was published), so the record is logged through the bundle.
    ``channel_ca`` is the DER certificate of the fleet's CA: clients pin the
    nodes' TLS to it (empty only in a v1 bundle, which predates it).
    """
    fleet_id: str
    role: str
    opaque_server_key: bytes
    enroll_key: bytes
    ksf: tuple  # sorted (name, value) pairs of KSF.to_dict()
    max_attempts: int
    endpoints: tuple
    deployment: bytes = bytes(32)
    channel_ca: bytes = b""

    def to_list(self) -> list:
        out = [self.fleet_id, self.role, self.opaque_server_key, self.enroll_key,
               [list(kv) for kv in self.ksf], self.max_attempts, list(self.endpoints),
               self.deployment]
        return out + [self.channel_ca] if self.channel_ca else out

    @classmethod
    def from_list(cls, x, version: str = BUNDLE_V) -> FleetEntry:
        if version == BUNDLE_V1:
            (fid, role, osk, ek, ksf, m, eps, dep), ca = x, b""
        else:
            fid, role, osk, ek, ksf, m, eps, dep, ca = x
            if not isinstance(ca, bytes) or not 0 < len(ca) <= MAX_CHANNEL_CA:
                raise ValueError("fleet entry: channel CA must be 1..4096 bytes")
        if role not in ROLES or not isinstance(m, int) or not eps:
            raise ValueError("fleet entry")
        for k in (osk, ek, dep):
            if not isinstance(k, bytes) or len(k) != 32:
                raise ValueError("fleet entry keys must be 32 bytes")
        return cls(str(fid), role, osk, ek, tuple((str(k), v) for k, v in ksf), m,
                   tuple(map(str, eps)), dep, ca)


ROLES = ("current", "retiring")


@dataclass(frozen=True)
class Bundle:
    namespace: str  # the service; epochs count per namespace
    epoch: int
    fleets: tuple  # FleetEntry, exactly one "current"
    not_before: int  # unix seconds
    not_after: int
    prev_hash: bytes = bytes(32)

    @property
    def version(self) -> str:
        """v2 when every fleet pins its channel, v1 when none does (older bundles)."""
        pins = [bool(f.channel_ca) for f in self.fleets]
        if all(pins):
            return BUNDLE_V
        if not any(pins):
            return BUNDLE_V1
        raise ValueError("either every fleet of a bundle names its channel CA or none does")

    def canonical(self) -> bytes:
        return _pack([self.version, self.namespace, self.epoch,
                      [f.to_list() for f in self.fleets], self.not_before, self.not_after,
                      self.prev_hash])

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    @property
    def current(self) -> FleetEntry:
        return next(f for f in self.fleets if f.role == "current")

    @property
    def retiring(self) -> tuple:
        return tuple(f for f in self.fleets if f.role == "retiring")

    @classmethod
    def from_canonical(cls, data: bytes) -> Bundle:
        try:
            v, ns, epoch, fleets, nb, na, prev = msgpack.unpackb(data, raw=False)
            if v not in (BUNDLE_V, BUNDLE_V1) or not isinstance(epoch, int) or epoch < 1:
                raise ValueError("version/epoch")
            if not isinstance(ns, str) or not 0 < len(ns.encode()) <= MAX_NAMESPACE:
                raise ValueError(f"namespace must be 1..{MAX_NAMESPACE} bytes of UTF-8")
            b = cls(ns, epoch, tuple(FleetEntry.from_list(f, v) for f in fleets),
                    int(nb), int(na), bytes(prev))
            if sum(f.role == "current" for f in b.fleets) != 1:
                raise ValueError("a bundle names exactly one current fleet")
            if len({f.fleet_id for f in b.fleets}) != len(b.fleets):
                raise ValueError("a fleet is listed twice")
            if b.canonical() != data:
                raise ValueError("not canonical")
            return b
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise BundleMalformed(f"bundle does not decode: {exc}") from None


def statement(bundle: Bundle, timestamp: int) -> bytes:
    return _pack([STATEMENT_V, bundle.namespace, timestamp, bundle.epoch, bundle.digest])


def tree_head(size: int, root: bytes, timestamp: int, namespace: str = "", epoch: int = 0,
              digest: bytes = bytes(32)) -> bytes:
    """A v2 tree head: the log's size and root at ``timestamp``, and the newest
    bundle (``epoch``, ``digest``) of ``namespace`` among those ``size``
    entries (epoch 0 and a zero digest: none, or no namespace asked for)."""
    return _pack([STH_V, size, root, timestamp, namespace, epoch, digest])


def tree_head_v1(size: int, root: bytes, timestamp: int) -> bytes:
    """The former format (still read: trust files and logs from before v2)."""
    return _pack([STH_V1, size, root, timestamp])


@dataclass(frozen=True)
class TreeHead:
    version: str
    size: int
    root: bytes
    timestamp: int
    namespace: str = ""
    epoch: int = 0  # 0: no bundle of the namespace in the log (or a v1 head)
    digest: bytes = bytes(32)


_WIRE = (("bundle", bytes), ("operator_sig", bytes), ("statement", bytes),
         ("witness_sig", bytes), ("leaf_index", int), ("inclusion", list), ("sth", bytes),
         ("sth_sig", bytes), ("consistency", list))
MAX_PROOF = 64  # hashes in a proof: enough for a log of 2**32 entries, twice


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
    consistency: list = field(default_factory=list)  # between the client's last size and sth's

    def to_wire(self) -> dict:
        return {k: getattr(self, k) for k, _ in _WIRE}

    @classmethod
    def from_wire(cls, d) -> SignedBundle:
        """Type-check a decoded msgpack map from the network."""
        if not isinstance(d, dict):
            raise BundleMalformed("trust response is not a map")
        vals: list[Any] = []
        for k, t in _WIRE:
            v: Any = d.get(k)
            if not isinstance(v, t) or isinstance(v, bool):
                raise BundleMalformed(f"trust response: {k} missing or not {t.__name__}")
            if isinstance(v, list) and (len(v) > MAX_PROOF or
                                        not all(isinstance(h, bytes) and len(h) == 32
                                                for h in v)):
                raise BundleMalformed(f"trust response: {k} is not a list of hashes")
            vals.append(v)
        return cls(*vals)


def _verify_sig(pk: bytes, sig: bytes, msg: bytes, err: type[TrustError], what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
    except (InvalidSignature, ValueError, TypeError):
        raise err(f"{what} signature does not verify") from None


@dataclass
class TrustState:
    """What a client remembers between runs (kept on disk): the largest tree
    head it verified, and per namespace the newest epoch it accepted."""
    tree_size: int = 0
    tree_root: bytes = merkle.EMPTY_ROOT
    epochs: dict = field(default_factory=dict)  # namespace -> [epoch, digest hex]
    endpoints: list = field(default_factory=list)  # a hint: where the last bundle was found

    def save(self, path: str) -> None:
        atomic_write(path, json.dumps({"tree_size": self.tree_size,
                                       "tree_root": self.tree_root.hex(),
                                       "epochs": self.epochs,
                                       "endpoints": self.endpoints}).encode(), mode=0o666)

    @classmethod
    def load(cls, path: str) -> TrustState:
        try:
            with open(path) as f:
                d = json.load(f)
            return cls(int(d["tree_size"]), bytes.fromhex(d["tree_root"]), dict(d["epochs"]),
                       [str(e) for e in d.get("endpoints", [])])
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrustError(f"trust state {path} is unreadable ({exc}); refusing to start "
                             "over from nothing, which would forget the log seen so far") from None


def parse_head(sth: bytes) -> TreeHead:
    """Decode a v1 or v2 tree head (strictly: canonical, typed)."""
    try:
        x = msgpack.unpackb(sth, raw=False)
        if not isinstance(x, list) or not x:
            raise ValueError
        if x[0] == STH_V1 and len(x) == 4:
            h = TreeHead(*x)
        elif x[0] == STH_V and len(x) == 7:
            h = TreeHead(*x)
            if not isinstance(h.namespace, str) or \
                    len(h.namespace.encode()) > MAX_NAMESPACE or \
                    not isinstance(h.epoch, int) or isinstance(h.epoch, bool) or h.epoch < 0 or \
                    not isinstance(h.digest, bytes) or len(h.digest) != 32 or \
                    (h.epoch == 0) != (h.digest == bytes(32)):
                raise ValueError
        else:
            raise ValueError
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
        raise BundleMalformed("tree head does not decode or has the wrong shape") from None
    if not isinstance(h.size, int) or isinstance(h.size, bool) or h.size < 0 or \
            not isinstance(h.root, bytes) or len(h.root) != 32 or \
            not isinstance(h.timestamp, int) or isinstance(h.timestamp, bool) or \
            _pack(list(dataclasses.astuple(h)) if h.version == STH_V
                  else [h.version, h.size, h.root, h.timestamp]) != sth:
        raise BundleMalformed("tree head has the wrong shape")
    return h


def parse_tree_head(sth: bytes) -> tuple[int, bytes, int]:
    h = parse_head(sth)
    return h.size, h.root, h.timestamp


def check_tree_head(sth: bytes, sth_sig: bytes, consistency: list, witness_pk: bytes,
                    state: TrustState) -> tuple[int, bytes]:
    """Verify a signed tree head and its consistency with the one seen before.

    A larger head must extend the one seen (proof from the old size); a
    smaller one (a node whose copy of the log lags) must be a prefix of it
    (proof from the new size), else :class:`LaggingLog`; the client never
    moves back to it.  Returns (size, root) of the verified head without
    changing ``state``."""
    _verify_sig(witness_pk, sth_sig, sth, BadWitnessSignature, "witness tree head")
    size, root, _ = parse_tree_head(sth)
    old_size, old_root = state.tree_size, state.tree_root
    if old_size == 0 or size == old_size:
        if size == old_size and root != old_root:
            raise ForkedLog(f"two different tree heads for size {size}")
        return size, root
    if size > old_size:
        ok = merkle.verify_consistency(old_size, size, old_root, root, list(consistency))
    else:
        ok = size > 0 and merkle.verify_consistency(size, old_size, root, old_root,
                                                    list(consistency))
    if not ok:
        if size < old_size:
            raise LaggingLog(f"tree head of size {size} is older than the {old_size} already "
                             "seen and not proven a prefix of it (a lagging copy of the log, "
                             "or a rollback)")
        raise ForkedLog("the witness's log is not consistent with the tree head seen before")
    return size, root


def check_freshness(sth: bytes, bundle: Bundle, now: int, max_age: int) -> TreeHead:
    """The tree head (already verified) vouches that ``bundle`` is its
    namespace's newest, and is at most ``max_age`` seconds old by ``now``.

    The witness puts the namespace's newest epoch and digest in every head it
    signs for that namespace.  The bundle's statement was just proven to be in
    the log under this head, so a head naming an older epoch, or the same
    epoch with another digest, contradicts itself (:class:`ForkedLog`); one
    naming a newer epoch shows the bundle superseded
    (:class:`SupersededBundle`).  An old head could have been signed before
    the bundle was superseded: :class:`StaleTreeHead`.  So a bundle superseded
    at time T is accepted by nobody after T + ``max_age``, whatever the
    client saved before (docs/trust.md, "Freshness")."""
    head = parse_head(sth)
    if head.version == STH_V1:
        raise StaleTreeHead("the tree head is v1: it does not say which epoch is the "
                            "namespace's newest (the witness or the node predates tree head v2 "
                            "and must be upgraded)")
    if head.namespace != bundle.namespace:
        raise StaleTreeHead(f"the tree head speaks for namespace {head.namespace!r}, not "
                            f"{bundle.namespace!r}")
    if head.epoch > bundle.epoch:
        raise SupersededBundle(f"epoch {bundle.epoch} was superseded: the witness's log holds "
                               f"epoch {head.epoch} of {bundle.namespace}")
    if head.epoch < bundle.epoch or head.digest != bundle.digest:
        raise ForkedLog(f"the witness's tree head names epoch {head.epoch} "
                        f"({head.digest.hex()[:16]}) as the newest of {bundle.namespace}, yet "
                        f"its log holds epoch {bundle.epoch} ({bundle.digest.hex()[:16]})")
    age = now - head.timestamp
    if age > max_age:
        raise StaleTreeHead(f"the newest tree head served is {age} s old (at most {max_age} s "
                            "accepted): the nodes have not reached the witness since, or this "
                            "machine's clock is ahead")
    return head


def verify(sb: SignedBundle, operator_pk: bytes, witness_pk: bytes, state: TrustState,
           now: int, max_head_age: int = MAX_HEAD_AGE) -> Bundle:
    """Verify a signed bundle; returns the bundle and updates ``state`` on success."""
    bundle = Bundle.from_canonical(sb.bundle)
    _verify_sig(operator_pk, sb.operator_sig, sb.bundle, BadOperatorSignature, "operator")
    _verify_sig(witness_pk, sb.witness_sig, sb.statement, BadWitnessSignature, "witness statement")
    try:
        v, ns, ts, epoch, digest = msgpack.unpackb(sb.statement, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
        raise BundleMalformed("witness statement does not decode") from None
    if (v, ns, epoch, digest) != (STATEMENT_V, bundle.namespace, bundle.epoch, bundle.digest):
        raise BadWitnessSignature("the witness statement is about another bundle")
    if not bundle.not_before <= now <= bundle.not_after:
        raise BundleExpired(f"bundle epoch {bundle.epoch} is valid from {bundle.not_before} to "
                            f"{bundle.not_after} (unix time); now is {now}")
    size, root = check_tree_head(sb.sth, sb.sth_sig, sb.consistency, witness_pk, state)
    if not merkle.verify_inclusion(merkle.hash_leaf(sb.statement), sb.leaf_index, size,
                                   list(sb.inclusion), root):
        raise NotInLog("the witness's log does not include this bundle's statement")
    seen = state.epochs.get(bundle.namespace)
    if seen is not None:
        if bundle.epoch < seen[0]:
            raise ReplayedBundle(f"epoch {bundle.epoch} is older than epoch {seen[0]} "
                                 "already accepted")
        if bundle.epoch == seen[0] and bundle.digest.hex() != seen[1]:
            raise ForkedLog(f"two different bundles for epoch {bundle.epoch}")
    check_freshness(sb.sth, bundle, now, max_head_age)
    if size > state.tree_size:
        state.tree_size, state.tree_root = size, root
    state.epochs[bundle.namespace] = [bundle.epoch, bundle.digest.hex()]
    return bundle


def new_signing_key() -> tuple[Ed25519PrivateKey, bytes]:
    sk = Ed25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes_raw()
