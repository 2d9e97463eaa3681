"""The monitor (``vault-raft audit verify``) and the log mirror nodes keep."""
import pytest

from vault_raft.trust import bundle as B
from vault_raft.trust.audit import audit
from vault_raft.trust.mirror import LogMirror
from vault_raft.trust.witness import WitnessLog

NOW = 1_800_000_000


def _b(ns, epoch, key=b"k" * 32):
    e = B.FleetEntry("f", "current", key, b"e" * 32, (), 10, ("http://127.0.0.1:1",))
    return B.Bundle(ns, epoch, (e,), NOW, NOW + 10)


def _log(path, sk, op_sk, bundles):
    w = WitnessLog(str(path), sk)
    w.registry.add(op_sk.public_key().public_bytes_raw())
    for b in bundles:
        c = b.canonical()
        w.cosign(c, op_sk.sign(c), op_sk.public_key().public_bytes_raw(), NOW)
    return w


def _fetcher(w):
    fields = ("statements", "sth", "sth_sig")
    return lambda start: dict(zip(fields, w.page(start, 2, NOW), strict=True))


def test_audit_lists_bundles_and_catches_a_rewritten_history(tmp_path):
    sk, _ = B.new_signing_key()
    op, _ = B.new_signing_key()
    w = _log(tmp_path / "a.log", sk, op, [_b("acme", 1), _b("x", 1), _b("acme", 2)])
    m = LogMirror(w.public_key)
    m.update(_fetcher(w))  # pages of 2: every page head checked
    state = B.TrustState()
    r = audit(m, state)
    assert r.ok and [e for _, e, _, _ in r.entries["acme"]] == [1, 2]
    assert state.tree_size == 3
    # the same witness key, a different history of the same length and longer
    fork = _log(tmp_path / "b.log", sk, op, [_b("acme", 1, b"z" * 32), _b("x", 1),
                                             _b("acme", 2), _b("acme", 3)])
    m2 = LogMirror(fork.public_key)
    m2.update(_fetcher(fork))
    r2 = audit(m2, state)
    assert not r2.ok and "history rewritten" in r2.problems[0]
    assert state.tree_size == 3  # not advanced past a failed audit
    # a mirror that already holds the genuine log refuses the forked pages
    with pytest.raises(B.ForkedLog):
        m.update(_fetcher(fork))
    assert m.size == 3


def test_audit_flags_what_the_witness_rules_forbid(tmp_path):
    sk, pk = B.new_signing_key()
    # statements a misbehaving witness might log (built by hand, signed heads)
    sts = [B.statement(_b("acme", 1), NOW), B.statement(_b("acme", 1, b"q" * 32), NOW),
           B.statement(_b("acme", 3), NOW)]
    from vault_raft.trust import merkle
    leaves = [merkle.hash_leaf(s) for s in sts]
    sth = B.tree_head(3, merkle.root(leaves), NOW)
    m = LogMirror.from_statements(pk, sts, sth, sk.sign(sth))
    r = audit(m, B.TrustState())
    assert any("two different bundles for epoch 1" in p for p in r.problems)
    assert any("epoch 3 follows epoch 1" in p for p in r.problems)


def test_audit_catches_a_head_that_hides_a_newer_bundle(tmp_path):
    """Clients trust a v2 head to name their namespace's newest bundle; the
    monitor checks each head it is served against the log."""
    from vault_raft.trust.audit import check_namespace_head
    sk, _ = B.new_signing_key()
    op, _ = B.new_signing_key()
    w = _log(tmp_path / "a.log", sk, op, [_b("acme", 1), _b("x", 1), _b("acme", 2)])
    m = LogMirror(w.public_key)
    m.update(_fetcher(w))
    r = audit(m, B.TrustState())
    page = dict(zip(("statements", "sth", "sth_sig"), w.page(3, 10, NOW, "acme"), strict=True))
    check_namespace_head(r, m, page, "acme")
    assert r.ok, r.problems
    # the same witness key signs a head that names epoch 1 as acme's newest
    b1 = _b("acme", 1)
    lie = B.tree_head(3, m.tree.root(), NOW, "acme", 1, b1.digest)
    check_namespace_head(r, m, {"sth": lie, "sth_sig": sk.sign(lie)}, "acme")
    assert any("hide a newer bundle" in p for p in r.problems)
