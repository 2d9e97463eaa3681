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


class HashTree:
    """An append-only RFC 9162 tree kept as stored hashes, for O(log n) proofs.

    ``levels[k]`` holds, 32 bytes each, the hash of every *complete*, aligned
    block of ``2**k`` leaves (level 0: the leaf hashes), so the tree takes
    about 64 bytes per leaf and nothing else: no entries.  Any subtree hash
    an RFC 9162 proof or root needs is either one stored block or a right
    edge made of O(log n) of them.  ``root``, ``inclusion_proof`` and
    ``consistency_proof`` (for any size up to ``size``) are therefore
    O(log n) look-ups plus at most O(log^2 n) hashes, the right edges being
    memoised; nothing is rebuilt from the leaves.

    Concurrency: one thread appends (and may ``truncate`` back what it
    appended and has not published); readers in other threads may compute
    proofs for any size they were told of, at the same time.  Blocks below a
    published size never change.
    """

    CACHE_MAX = 4096

    def __init__(self, leaves=()):
        self.levels: list[bytearray] = [bytearray()]
        self._size = 0
        self._cache: dict[tuple[int, int], bytes] = {}
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return self._size

    @classmethod
    def from_hashes(cls, blob: bytes) -> HashTree:
        """A tree from concatenated 32-byte leaf hashes."""
        if len(blob) % HASH_LEN:
            raise ValueError("leaf hashes must be 32 bytes each")
        t = cls()
        for i in range(0, len(blob), HASH_LEN):
            t.append(blob[i:i + HASH_LEN])
        return t

    def leaf_hashes(self, end: int | None = None) -> bytes:
        end = self._size if end is None else end
        return bytes(self.levels[0][:end * HASH_LEN])

    def append(self, leaf_hash: bytes) -> None:
        if len(leaf_hash) != HASH_LEN:
            raise ValueError("a leaf hash is 32 bytes")
        self.levels[0] += leaf_hash
        self._size += 1
        k, count = 0, self._size
        while count % 2 == 0:  # a block of 2**(k+1) leaves just completed
            lvl = self.levels[k]
            pair = lvl[len(lvl) - 2 * HASH_LEN:]
            if len(self.levels) == k + 1:
                self.levels.append(bytearray())
            self.levels[k + 1] += hash_children(bytes(pair[:HASH_LEN]), bytes(pair[HASH_LEN:]))
            k, count = k + 1, count // 2

    def truncate(self, size: int) -> None:
        """Drop the leaves from ``size`` on (an unverified page the writer appended)."""
        if not 0 <= size <= self._size:
            raise ValueError("truncate beyond the tree")
        self._cache.clear()
        self._size = size
        for k, lvl in enumerate(self.levels):
            del lvl[(size >> k) * HASH_LEN:]
        while len(self.levels) > 1 and not self.levels[-1]:
            self.levels.pop()

    def _block(self, k: int, i: int) -> bytes:
        return bytes(self.levels[k][i * HASH_LEN:(i + 1) * HASH_LEN])

    def mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for ``0 <= lo < hi <= size``."""
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:  # a stored block
            return self._block(n.bit_length() - 1, lo // n)
        key = (lo, hi)
        h = self._cache.get(key)
        if h is None:
            k = _split(n)
            h = hash_children(self.mth(lo, lo + k), self.mth(lo + k, hi))
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            self._cache[key] = h
        return h

    def root(self, size: int | None = None) -> bytes:
        size = self._size if size is None else size
        if not 0 <= size <= self._size:
            raise ValueError("tree size beyond the tree")
        return self.mth(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) (RFC 9162 section 2.1.3.1)."""
        size = self._size if size is None else size
        if not 0 <= index < size <= self._size:
            raise ValueError("leaf index outside the tree")
        out: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                out.append(self.mth(lo + k, hi))
                hi = lo + k
            else:
                out.append(self.mth(lo, lo + k))
                lo += k
        out.reverse()
        return out

    def consistency_proof(self, first: int, size: int | None = None) -> list[bytes]:
        """PROOF(first, D[0:size]) (RFC 9162 section 2.1.4.1), ``0 < first <= size``."""
        size = self._size if size is None else size
        if not 0 < first <= size <= self._size:
            raise ValueError("first tree size must be 1..size")
        out: list[bytes] = []
        lo, hi, m, whole = 0, size, first, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                out.append(self.mth(lo + k, hi))
                hi = lo + k
            else:
                out.append(self.mth(lo, lo + k))
                lo, m, whole = lo + k, m - k, False
        if not whole:
            out.append(self.mth(lo, hi))
        out.reverse()
        return out
