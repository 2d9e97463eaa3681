"""RFC 9162 / RFC 6962 Merkle trees: published vectors, an independent computation, properties."""
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from vault_raft.trust import merkle as M

# The RFC 6962 reference inputs and roots (certificate-transparency's test data).
LEAF_INPUTS = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
LEAVES = [M.hash_leaf(d) for d in LEAF_INPUTS]


def test_reference_roots():
    for n in range(0, 9):
        assert M.root(LEAVES[:n]).hex() == ROOTS[n]


def test_reference_inclusion_proofs():
    for index, size, path in INCLUSION:
        proof = M.inclusion_proof(LEAVES[:size], index)
        assert [p.hex() for p in proof] == path
        assert M.verify_inclusion(LEAVES[index], index, size, proof, bytes.fromhex(ROOTS[size]))


def _independent_root(leaves):
    """Bottom-up: pair neighbours level by level, promoting a lone last node
    (RFC 9162's left-heavy split gives the same tree)."""
    level = list(leaves)
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _leaves(n):
    return [M.hash_leaf(i.to_bytes(4, "big")) for i in range(n)]


def test_root_matches_an_independent_computation():
    for n in range(0, 70):
        assert M.root(_leaves(n)) == _independent_root(_leaves(n))


def test_every_proof_in_small_trees():
    for n in range(1, 34):
        leaves = _leaves(n)
        r = M.root(leaves)
        for i in range(n):
            assert M.verify_inclusion(leaves[i], i, n, M.inclusion_proof(leaves, i), r)
        for m in range(1, n + 1):
            assert M.verify_consistency(m, n, M.root(leaves[:m]), r,
                                        M.consistency_proof(leaves, m))


sizes = st.integers(1, 300)


@given(sizes, st.data())
def test_every_inclusion_proof_verifies_and_any_alteration_fails(n, data):
    leaves = _leaves(n)
    r = M.root(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = M.inclusion_proof(leaves, i)
    assert M.verify_inclusion(leaves[i], i, n, proof, r)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(proof)
        bad[j] = bytes(b ^ (1 << (bit % 8)) if k == bit // 8 % 32 else b
                       for k, b in enumerate(bad[j]))
        assert not M.verify_inclusion(leaves[i], i, n, bad, r)
        assert not M.verify_inclusion(leaves[i], i, n, proof[:-1], r)
        assert not M.verify_inclusion(leaves[i], i, n, proof + [r], r)
    other = data.draw(st.integers(0, n - 1))
    if other != i:
        assert not M.verify_inclusion(leaves[i], other, n, proof, r)
    assert not M.verify_inclusion(M.hash_leaf(b"not in the log"), i, n, proof, r)


@given(sizes, st.data())
def test_every_consistency_proof_verifies_and_any_alteration_fails(n, data):
    leaves = _leaves(n)
    m = data.draw(st.integers(1, n))
    proof = M.consistency_proof(leaves, m)
    r1, r2 = M.root(leaves[:m]), M.root(leaves)
    assert M.verify_consistency(m, n, r1, r2, proof)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        assert not M.verify_consistency(m, n, r1, r2, bad)
        assert not M.verify_consistency(m, n, r1, r2, proof[:-1])
    # a forked history: same size, different leaf
    forked = list(leaves)
    k = data.draw(st.integers(0, m - 1))
    forked[k] = M.hash_leaf(b"rewritten")
    assert not M.verify_consistency(m, n, M.root(forked[:m]), r2, proof)
    assert not M.verify_consistency(m, n, r1, M.root(forked), proof)


def test_malformed_inputs_are_false_not_exceptions():
    leaves = _leaves(5)
    r = M.root(leaves)
    p = M.inclusion_proof(leaves, 2)
    assert not M.verify_inclusion(leaves[2], 5, 5, p, r)
    assert not M.verify_inclusion(leaves[2], -1, 5, p, r)
    assert not M.verify_inclusion(leaves[2], 2, 5, p + [b"short"], r)
    assert not M.verify_inclusion(b"x", 2, 5, p, r)
    assert not M.verify_consistency(0, 5, r, r, [])
    assert not M.verify_consistency(6, 5, r, r, [])
    assert not M.verify_consistency(3, 5, r, r, [])
    assert M.verify_consistency(5, 5, r, r, [])
    assert not M.verify_consistency(5, 5, r, M.EMPTY_ROOT, [])


# ------------------------------------------- the stored-hash tree (nodes, witness)

def test_hash_tree_gives_the_same_roots_and_proofs_for_every_size():
    """Every root, inclusion and consistency proof of every prefix, from the
    stored hashes, equals the recursive reference computation."""
    leaves = _leaves(70)
    t = M.HashTree(leaves)
    assert M.HashTree.from_hashes(t.leaf_hashes()).levels == t.levels
    for n in range(0, 71):
        assert t.root(n) == M.root(leaves[:n])
        for i in range(n):
            assert t.inclusion_proof(i, n) == M.inclusion_proof(leaves[:n], i)
        for m in range(1, n + 1):
            assert t.consistency_proof(m, n) == M.consistency_proof(leaves[:n], m)


@given(st.integers(0, 300), st.integers(0, 300), st.data())
def test_hash_tree_truncate_then_grow_differently(n, cut, data):
    """A writer appends a page, finds it does not match its head and takes it
    back: the tree is then exactly the shorter one (memoised edges included)."""
    leaves = _leaves(n)
    t = M.HashTree(leaves)
    cut = min(cut, n)
    t.root()
    if n:
        t.inclusion_proof(data.draw(st.integers(0, n - 1)))
    t.truncate(cut)
    other = leaves[:cut] + [M.hash_leaf(b"x%d" % i) for i in range(data.draw(st.integers(0, 40)))]
    for h in other[cut:]:
        t.append(h)
    assert t.levels == M.HashTree(other).levels
    assert t.root() == M.root(other)
    if other:
        i = data.draw(st.integers(0, len(other) - 1))
        assert t.inclusion_proof(i) == M.inclusion_proof(other, i)
        m = data.draw(st.integers(1, len(other)))
        assert t.consistency_proof(m) == M.consistency_proof(other, m)


def test_hash_tree_proofs_are_logarithmic():
    """A proof over a million leaves costs a few dozen hashes, not a rebuild."""
    import time
    t = M.HashTree.from_hashes(b"".join(M.hash_leaf(i.to_bytes(4, "big"))
                                        for i in range(1 << 20 | 12345)))
    n = t.size
    calls = []
    real = M.hash_children

    def counted(left, right):
        calls.append(1)
        return real(left, right)

    M.hash_children = counted
    try:
        t0 = time.perf_counter()
        r = t.root()
        p = t.inclusion_proof(777, n)
        c = t.consistency_proof(n - 5000, n)
        elapsed = time.perf_counter() - t0
    finally:
        M.hash_children = real
    assert len(calls) <= 2 * 21 * 21, len(calls)
    assert M.verify_inclusion(t.mth(777, 778), 777, n, p, r)
    assert M.verify_consistency(n - 5000, n, t.root(n - 5000), r, c)
    assert elapsed < 0.05, elapsed
