"""Bundle verification: a good bundle passes; each attack fails with its own error."""
import copy

import msgpack
import pytest

from vault_raft.trust import bundle as B
from vault_raft.trust import merkle as M

NOW = 1_800_000_000


class Witness:
    """A minimal in-memory witness for these tests: signs statements and tree heads."""

    def __init__(self):
        self.sk, self.pk = B.new_signing_key()
        self.leaves: list[bytes] = []
        self.statements: list[bytes] = []

    def cosign(self, op_sk, bundle: B.Bundle, since: int = 0) -> B.SignedBundle:
        canon = bundle.canonical()
        st = B.statement(bundle, NOW)
        self.statements.append(st)
        self.leaves.append(M.hash_leaf(st))
        return self.serve(op_sk.sign(canon), canon, len(self.leaves) - 1, since)

    def head(self, namespace, size, ts=NOW, leaves=None):
        """A v2 head: the root of the first ``size`` entries and the newest
        statement of ``namespace`` among them."""
        leaves = self.leaves[:size] if leaves is None else leaves
        epoch, digest = 0, bytes(32)
        for st in self.statements[:size]:
            _, ns, _, e, d = msgpack.unpackb(st, raw=False)
            if ns == namespace:
                epoch, digest = e, d
        return B.tree_head(size, M.root(leaves), ts, namespace, epoch, digest)

    def serve(self, op_sig, canon, index, since=0, leaves=None) -> B.SignedBundle:
        leaves = self.leaves if leaves is None else leaves
        size = len(leaves)
        st = self.statements[index]
        sth = self.head(msgpack.unpackb(st, raw=False)[1], size, leaves=leaves)
        return B.SignedBundle(canon, op_sig, st, self.sk.sign(st), index,
                              M.inclusion_proof(leaves, index), sth, self.sk.sign(sth),
                              M.consistency_proof(leaves, since) if since else [])


def _entry(key=b"k" * 32, fleet_id="fa", role="current"):
    return B.FleetEntry(fleet_id, role, key, b"e" * 32, (("kind", "identity"),), 10,
                        ("http://127.0.0.1:7201",))


def _bundle(epoch=1, fleet="f1", nb=NOW - 10, na=NOW + 3600, key=b"k" * 32):
    return B.Bundle(fleet, epoch, (_entry(key),), nb, na)


@pytest.fixture
def world():
    op_sk, op_pk = B.new_signing_key()
    return op_sk, op_pk, Witness(), B.TrustState()


def test_good_bundles_and_rotation(world, tmp_path):
    op_sk, op_pk, w, state = world
    b1 = _bundle()
    assert B.verify(w.cosign(op_sk, b1), op_pk, w.pk, state, NOW) == b1
    p = str(tmp_path / "trust.json")
    state.save(p)
    state = B.TrustState.load(p)
    b2 = B.Bundle("f1", 2, (_entry(b"n" * 32, "fb"), _entry(fleet_id="fa", role="retiring")),
                  NOW - 1, NOW + 10, b1.digest)
    assert B.verify(w.cosign(op_sk, b2, since=state.tree_size), op_pk, w.pk, state, NOW).epoch == 2


def test_bad_operator_signature(world):
    op_sk, op_pk, w, state = world
    sb = w.cosign(B.new_signing_key()[0], _bundle())
    with pytest.raises(B.BadOperatorSignature):
        B.verify(sb, op_pk, w.pk, state, NOW)


def test_bad_witness_signature(world):
    op_sk, op_pk, w, state = world
    sb = w.cosign(op_sk, _bundle())
    with pytest.raises(B.BadWitnessSignature):
        B.verify(sb, op_pk, B.new_signing_key()[1], state, NOW)
    sb2 = copy.copy(sb)
    sb2.statement = B.statement(_bundle(key=b"z" * 32), NOW)
    sb2.witness_sig = w.sk.sign(sb2.statement)
    with pytest.raises(B.BadWitnessSignature, match="another bundle"):
        B.verify(sb2, op_pk, w.pk, state, NOW)


def test_expired_bundle(world):
    op_sk, op_pk, w, state = world
    sb = w.cosign(op_sk, _bundle(na=NOW - 1))
    with pytest.raises(B.BundleExpired):
        B.verify(sb, op_pk, w.pk, state, NOW)


def test_bundle_missing_from_the_log(world):
    op_sk, op_pk, w, state = world
    w.cosign(op_sk, _bundle(fleet="other"))
    sb = w.cosign(op_sk, _bundle())
    # the witness serves a tree head that does not contain the statement
    leaves_without = w.leaves[:-1]
    sb.sth = w.head("f1", len(leaves_without))
    sb.sth_sig = w.sk.sign(sb.sth)
    sb.leaf_index = 0
    sb.inclusion = M.inclusion_proof(leaves_without, 0)
    with pytest.raises(B.NotInLog):
        B.verify(sb, op_pk, w.pk, state, NOW)


def test_forked_log(world):
    op_sk, op_pk, w, state = world
    B.verify(w.cosign(op_sk, _bundle(fleet="a")), op_pk, w.pk, state, NOW)
    B.verify(w.cosign(op_sk, _bundle(fleet="b"), since=state.tree_size), op_pk, w.pk, state, NOW)
    # a second view of the log in which history was rewritten
    fork = Witness()
    fork.sk, fork.pk = w.sk, w.pk
    fork.cosign(op_sk, _bundle(fleet="a", key=b"evil" * 8))
    fork.cosign(op_sk, _bundle(fleet="b"))
    sb = fork.cosign(op_sk, _bundle(fleet="c"))
    sb.consistency = M.consistency_proof(fork.leaves, state.tree_size)
    with pytest.raises(B.ForkedLog):
        B.verify(sb, op_pk, w.pk, state, NOW)


def test_rollback_to_an_older_tree_head(world):
    op_sk, op_pk, w, state = world
    first = w.cosign(op_sk, _bundle(fleet="a"))
    B.verify(first, op_pk, w.pk, state, NOW)
    B.verify(w.cosign(op_sk, _bundle(fleet="b"), since=state.tree_size), op_pk, w.pk, state, NOW)
    with pytest.raises(B.ForkedLog, match="rollback"):
        B.verify(first, op_pk, w.pk, state, NOW)


def test_replayed_older_bundle(world):
    op_sk, op_pk, w, state = world
    old = _bundle(epoch=1)
    B.verify(w.cosign(op_sk, old), op_pk, w.pk, state, NOW)
    B.verify(w.cosign(op_sk, _bundle(epoch=2), since=state.tree_size), op_pk, w.pk, state, NOW)
    replay = w.serve(op_sk.sign(old.canonical()), old.canonical(), 0, since=state.tree_size)
    with pytest.raises(B.ReplayedBundle):
        B.verify(replay, op_pk, w.pk, state, NOW)


def test_two_bundles_for_one_epoch(world):
    op_sk, op_pk, w, state = world
    B.verify(w.cosign(op_sk, _bundle(epoch=3)), op_pk, w.pk, state, NOW)
    sb = w.cosign(op_sk, _bundle(epoch=3, key=b"q" * 32), since=state.tree_size)
    with pytest.raises(B.ForkedLog, match="two different bundles"):
        B.verify(sb, op_pk, w.pk, state, NOW)


def test_malformed_bundle(world):
    op_sk, op_pk, w, state = world
    sb = w.cosign(op_sk, _bundle())
    sb.bundle = sb.bundle + b"\x00"
    with pytest.raises(B.BundleMalformed):
        B.verify(sb, op_pk, w.pk, state, NOW)


# ---------------------------------------------------- the channel key (v2)

def test_channel_ca_is_encoded_and_covered_by_the_signature(world):
    """A v2 bundle carries each fleet's channel CA; changing it breaks the
    operator signature; a v1 bundle (none) still decodes, canonically."""
    import dataclasses

    import msgpack
    op_sk, op_pk, w, state = world
    ca = b"\x30" + b"c" * 300
    b = B.Bundle("f1", 1, (dataclasses.replace(_entry(), channel_ca=ca),), NOW - 10, NOW + 3600)
    assert b.version == B.BUNDLE_V and B.Bundle.from_canonical(b.canonical()) == b
    assert B.Bundle.from_canonical(b.canonical()).current.channel_ca == ca
    sb = w.cosign(op_sk, b)
    assert B.verify(sb, op_pk, w.pk, state, NOW).current.channel_ca == ca
    swapped = dataclasses.replace(b, fleets=(dataclasses.replace(b.current, channel_ca=b"\x30" +
                                                                 b"d" * 300),))
    sb.bundle = swapped.canonical()
    with pytest.raises(B.BadOperatorSignature):
        B.verify(sb, op_pk, w.pk, B.TrustState(), NOW)
    v1 = _bundle()
    assert v1.version == B.BUNDLE_V1 and v1.current.channel_ca == b""
    assert B.Bundle.from_canonical(v1.canonical()) == v1
    # no v2 entry without a channel CA, no v1 entry with one, no mixed bundle
    arr = msgpack.unpackb(b.canonical(), raw=False)
    for bad in ([B.BUNDLE_V1] + arr[1:],
                [B.BUNDLE_V] + msgpack.unpackb(v1.canonical(), raw=False)[1:],
                arr[:3] + [[arr[3][0][:8] + [b""]]] + arr[4:]):
        with pytest.raises(B.BundleMalformed):
            B.Bundle.from_canonical(msgpack.packb(bad, use_bin_type=True))
    mixed = B.Bundle("f1", 1, (b.current, _entry(b"n" * 32, "fb", "retiring")), NOW, NOW + 1)
    with pytest.raises(ValueError):
        mixed.canonical()


# ------------------------------------------------ freshness (tree head v2)

def test_a_superseded_bundle_is_refused_even_without_saved_state(world):
    """The tree head names the namespace's newest epoch: a client that has
    never seen epoch 2 still refuses epoch 1 once the log holds epoch 2."""
    op_sk, op_pk, w, _ = world
    old = _bundle(epoch=1)
    B.verify(w.cosign(op_sk, old), op_pk, w.pk, B.TrustState(), NOW)
    w.cosign(op_sk, _bundle(epoch=2))
    replay = w.serve(op_sk.sign(old.canonical()), old.canonical(), 0)
    with pytest.raises(B.SupersededBundle, match="epoch 2"):
        B.verify(replay, op_pk, w.pk, B.TrustState(), NOW)
    assert issubclass(B.SupersededBundle, B.ReplayedBundle)  # a stale node: clients move on


def test_an_old_tree_head_cannot_vouch_for_freshness(world):
    """A head from before the new epoch was logged, replayed later: refused
    once older than the client accepts (by default 6 h)."""
    op_sk, op_pk, w, _ = world
    sb = w.cosign(op_sk, _bundle(na=NOW + 86400))
    assert B.verify(sb, op_pk, w.pk, B.TrustState(), NOW + B.MAX_HEAD_AGE).epoch == 1
    with pytest.raises(B.StaleTreeHead, match="old"):
        B.verify(sb, op_pk, w.pk, B.TrustState(), NOW + B.MAX_HEAD_AGE + 1)
    with pytest.raises(B.StaleTreeHead):
        B.verify(sb, op_pk, w.pk, B.TrustState(), NOW + 61, max_head_age=60)


def test_heads_that_cannot_speak_for_the_bundle(world):
    op_sk, op_pk, w, _ = world
    b = _bundle()
    sb = w.cosign(op_sk, b)
    size = len(w.leaves)
    cases = {
        B.StaleTreeHead: [B.tree_head_v1(size, M.root(w.leaves), NOW),  # the former format
                          w.head("other", size),  # another namespace's head
                          B.tree_head(size, M.root(w.leaves), NOW)],  # no namespace at all
        # the same log, yet a head naming another bundle as the newest: the witness lies
        B.ForkedLog: [B.tree_head(size, M.root(w.leaves), NOW, "f1", 1, b"x" * 32),
                      B.tree_head(size, M.root(w.leaves), NOW, "f1", 0, bytes(32))],
    }
    for err, heads in cases.items():
        for sth in heads:
            sb.sth, sb.sth_sig = sth, w.sk.sign(sth)
            with pytest.raises(err):
                B.verify(sb, op_pk, w.pk, B.TrustState(), NOW)


def test_tree_heads_decode_strictly():
    h = B.tree_head(3, b"r" * 32, NOW, "acme", 2, b"d" * 32)
    assert B.parse_head(h) == B.TreeHead(B.STH_V, 3, b"r" * 32, NOW, "acme", 2, b"d" * 32)
    assert B.parse_head(B.tree_head_v1(3, b"r" * 32, NOW)).version == B.STH_V1
    for bad in ([B.STH_V, 3, b"r" * 32, NOW, "acme", 2, b"d" * 31],
                [B.STH_V, 3, b"r" * 32, NOW, "acme", 0, b"d" * 32],  # epoch 0 with a digest
                [B.STH_V, 3, b"r" * 32, NOW, "acme", True, b"d" * 32],
                [B.STH_V, 3, b"r" * 32, NOW, "a" * 129, 2, b"d" * 32],
                [B.STH_V1, 3, b"r" * 32, NOW, "acme", 2, b"d" * 32],
                [B.STH_V, 3, b"r" * 32, NOW]):
        with pytest.raises(B.BundleMalformed):
            B.parse_head(msgpack.packb(bad, use_bin_type=True))
