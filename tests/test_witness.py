"""The witness log: co-signing rules, durability across restarts, and client verification."""
import pytest

from vault_raft.fleet import bundle as B
from vault_raft.fleet.witness import WitnessLog, WitnessLogCorrupt, WitnessRefused

NOW = 1_800_000_000


def _bundle(epoch, fleet="f1", key=b"k" * 32, prev=bytes(32)):
    entry = B.FleetEntry("fa", "current", key, b"e" * 32, (), 10, ("http://127.0.0.1:1",))
    return B.Bundle(fleet, epoch, (entry,), NOW - 5, NOW + 100, prev)


def _signed(w: WitnessLog, op_sk, b: B.Bundle, state: B.TrustState) -> B.SignedBundle:
    canon = b.canonical()
    sig = op_sk.sign(canon)
    st, wsig, idx = w.cosign(canon, sig, op_sk.public_key().public_bytes_raw(), NOW)
    sth, sth_sig = w.tree_head(NOW, b.namespace)
    size = w.size
    return B.SignedBundle(canon, sig, st, wsig, idx, w.inclusion(idx, size), sth, sth_sig,
                          w.consistency(state.tree_size, size))


def test_rules_and_restart(tmp_path):
    wsk, _ = B.new_signing_key()
    op_sk, op_pk = B.new_signing_key()
    path = str(tmp_path / "witness.log")
    w = WitnessLog(path, wsk)
    w.registry.add(op_pk)
    state = B.TrustState()
    b1 = _bundle(1)
    B.verify(_signed(w, op_sk, b1, state), op_pk, w.public_key, state, NOW)
    # a retry of the same bundle gets the same co-signature, and logs nothing new
    size = w.size
    assert w.cosign(b1.canonical(), op_sk.sign(b1.canonical()), op_pk, NOW + 5)[2] == 0
    assert w.size == size
    with pytest.raises(WitnessRefused, match="another operator"):
        other_op = B.new_signing_key()[0]
        w.registry.add(other_op.public_key().public_bytes_raw())
        b2 = _bundle(2)
        w.cosign(b2.canonical(), other_op.sign(b2.canonical()),
                 other_op.public_key().public_bytes_raw(), NOW)
    with pytest.raises(WitnessRefused, match="exactly one"):
        b3 = _bundle(3)
        w.cosign(b3.canonical(), op_sk.sign(b3.canonical()), op_pk, NOW)
    with pytest.raises(WitnessRefused, match="epoch 1 was already"):
        other = _bundle(1, key=b"x" * 32)
        w.cosign(other.canonical(), op_sk.sign(other.canonical()), op_pk, NOW)
    with pytest.raises(B.BadOperatorSignature):
        b2 = _bundle(2)
        w.cosign(b2.canonical(), B.new_signing_key()[0].sign(b2.canonical()), op_pk, NOW)
    B.verify(_signed(w, op_sk, _bundle(1, fleet="f2"), state), op_pk, w.public_key, state, NOW)
    root_before = w.tree_head(NOW)[0]
    w.close()
    # restart: same history, same root; the rules still remember what was published
    w2 = WitnessLog(path, wsk)
    assert w2.tree_head(NOW)[0] == root_before
    with pytest.raises(WitnessRefused):
        b1b = _bundle(1, key=b"y" * 32)
        w2.cosign(b1b.canonical(), op_sk.sign(b1b.canonical()), op_pk, NOW)
    B.verify(_signed(w2, op_sk, _bundle(2, prev=b1.digest), state), op_pk, w2.public_key, state,
             NOW)
    w2.close()


def test_damaged_log_refuses_to_start(tmp_path):
    wsk, _ = B.new_signing_key()
    op_sk, op_pk = B.new_signing_key()
    path = str(tmp_path / "witness.log")
    w = WitnessLog(path, wsk)
    w.registry.add(op_pk)
    b = _bundle(1)
    w.cosign(b.canonical(), op_sk.sign(b.canonical()), op_pk, NOW)
    w.close()
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(WitnessLogCorrupt):
        WitnessLog(path, wsk)
