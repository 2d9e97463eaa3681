"""Deployment evidence: node key statements, the operator's record, and what
``fleet verify-deployment`` rejects."""
import msgpack
import pytest

from vault_raft.fleet.keystore import FileKeystore
from vault_raft.trust import bundle as B
from vault_raft.trust import deployment as D

NOW = 1_800_000_000


def _fleet(n=3):
    ks = FileKeystore.generate("f1")
    nodes = [ks.for_node(f"n{i}") for i in range(1, n + 1)]
    statements = [nk.key_statement(NOW) for nk in nodes]
    return ks, nodes, statements


def _entry(ks, record, n=3):
    return B.FleetEntry("f1", "current", ks.opaque_setup().public_key, ks.enroll_public_key(),
                        (), 10, tuple(f"http://127.0.0.1:{i}" for i in range(n)),
                        D.digest(record))


def test_a_genuine_record_verifies():
    ks, nodes, statements = _fleet()
    op_sk, op_pk = B.new_signing_key()
    record, sig = D.assemble("f1", statements, op_sk)
    out = D.verify(record, sig, op_pk, _entry(ks, record))
    assert [n["node"] for n in out] == ["n1", "n2", "n3"]
    assert len({n["node_key"] for n in out}) == 3  # one identity key per node
    # statements commit to secret keys by hash, never include them
    assert ks._seal_key not in record and ks._token_key not in record


def _tampered(statements, i, fn):
    st, sig = statements[i]
    fields = msgpack.unpackb(st, raw=False)
    fn(fields)
    out = list(statements)
    out[i] = (msgpack.packb(fields, use_bin_type=True), sig)
    return out


@pytest.mark.parametrize("case,match", [
    ("node signature", "signature does not verify"),
    ("other opaque key", "OPAQUE server key"),
    ("operator signature", "operator's signature"),
    ("digest", "digest"),
    ("duplicate node", "twice"),
    ("missing node", "endpoints"),
    ("other fleet", "fleet"),
])
def test_forged_records_are_rejected(case, match):
    ks, nodes, statements = _fleet()
    op_sk, op_pk = B.new_signing_key()
    entry_ks = ks
    if case == "node signature":  # a node's statement altered after it signed it
        statements = _tampered(statements, 1, lambda f: f.__setitem__(5, NOW + 1))
    elif case == "other opaque key":  # a node that holds other keys (signed by itself)
        other = FileKeystore.generate("f1").for_node("n2")
        statements[1] = other.key_statement(NOW)
    elif case == "duplicate node":
        statements[2] = statements[1]
    elif case == "missing node":
        statements = statements[:2]
    elif case == "other fleet":
        statements = [FileKeystore.generate("f2").for_node(f"n{i}").key_statement(NOW)
                      for i in range(3)]
    record, sig = D.assemble("f1", statements, op_sk)
    entry = _entry(entry_ks, record)
    if case == "operator signature":
        sig = B.new_signing_key()[0].sign(record)
    if case == "digest":
        entry = _entry(entry_ks, record + b"\x00")
    with pytest.raises(D.DeploymentError, match=match):
        D.verify(record, sig, op_pk, entry)
