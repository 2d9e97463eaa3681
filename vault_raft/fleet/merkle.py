"""RFC 9162 (Certificate Transparency 2.0) Merkle trees: hashes and proofs.

The witness's audit log (issue 6) is an append-only list of entries; this
module is its mathematics, as pure functions over bytes:

* ``hash_leaf(d) = SHA-256(0x00 || d)``, ``hash_children(l, r) =
  SHA-256(0x01 || l || r)`` -- domain separation between leaves and nodes;
* ``root`` is MTH of RFC 9162 section 2.1.1 (split at the largest power of two
  smaller than n);
* inclusion proofs (2.1.3) and consistency proofs (2.1.4), generated from the
  leaf hashes and verified with the RFC's verification algorithms (2.1.3.2,
  2.1.4.2), which never rebuild the tree.

Verification returns False for anything malformed; it never raises.
"""

from __future__ import annotations

import hashlib

HASH_LEN = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def hash_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: list[bytes]) -> bytes:
    """MTH over leaf *hashes*."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return hash_children(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError("leaf index outside the tree")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return inclusion_proof(leaves[:k], index) + [root(leaves[k:])]
    return inclusion_proof(leaves[k:], index - k) + [root(leaves[:k])]


def consistency_proof(leaves: list[bytes], first: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 section 2.1.4.1 for ``0 < first <= len(leaves)``."""
    n = len(leaves)
    if not 0 < first <= n:
        raise ValueError("first tree size must be 1..n")

    def sub(m: int, d: list[bytes], b: bool) -> list[bytes]:
        if m == len(d):
            return [] if b else [root(d)]
        k = _split(len(d))
        if m <= k:
            return sub(m, d[:k], b) + [root(d[k:])]
        return sub(m - k, d[k:], False) + [root(d[:k])]

    return sub(first, leaves, True)


def _ok_hashes(items) -> bool:
    return isinstance(items, (list, tuple)) and all(
        isinstance(h, (bytes, bytearray)) and len(h) == HASH_LEN for h in items)


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes],
                     root_hash: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not _ok_hashes(proof) or not _ok_hashes([leaf_hash, root_hash]):
        return False
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2 (``first == second`` needs an empty proof and equal roots)."""
    if not _ok_hashes(proof) or not _ok_hashes([first_root, second_root]):
        return False
    if not (isinstance(first, int) and isinstance(second, int)) or not 0 < first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two
        path = [bytes(first_root)] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
