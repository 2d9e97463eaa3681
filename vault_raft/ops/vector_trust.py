"""The trust part of the conformance vectors: the deployment record, the
bundles of epochs 1 and 2, the witness's log with its tree head, inclusion
and consistency proofs, and the client's trust state before and after."""

from __future__ import annotations

from vault_raft.api import binding as P
from vault_raft.fleet.keystore import FileKeystore
from vault_raft.ops.vector_inputs import T0, ed25519_key, ed_priv, ed_pub, fixed, hexed
from vault_raft.trust import bundle as B
from vault_raft.trust import deployment as D
from vault_raft.trust import merkle


def trust_vectors(*, fleet_id: str, oprf_seed: bytes, server_sk: bytes, server_pk: bytes,
                  seal_key: bytes, token_key: bytes, enroll_sk: bytes, enroll_pk: bytes,
                  cluster_secret: str, channel_ca: bytes, endpoints: list[str],
                  ksf_pairs: list, max_attempts_default: int) -> dict:
    """The fleet's trust vectors, for the fleet keys :func:`build
    <vault_raft.ops.protocol_vectors.build>` derives."""
    operator_sk, witness_sk = ed25519_key("operator key"), ed25519_key("witness key")
    node_statements = []
    opaque_setup = oprf_seed + server_sk + server_pk
    for i in (1, 2, 3):
        ks = FileKeystore(fleet_id, opaque_setup, seal_key, token_key, enroll_sk, enroll_pk,
                          cluster_secret, f"n{i}", fixed(f"node {i} identity key", 32))
        node_statements.append(ks.key_statement(T0 - 30 * 86400 + i))
    dep_record, dep_sig = D.assemble(fleet_id, node_statements, operator_sk)
    entry = B.FleetEntry(fleet_id, "current", server_pk, enroll_pk, tuple(ksf_pairs),
                         max_attempts_default, tuple(endpoints), D.digest(dep_record), channel_ca)
    namespace = "example"
    b1 = B.Bundle(namespace, 1, (entry,), T0 - 40 * 86400, T0 - 10 * 86400, bytes(32))
    b2 = B.Bundle(namespace, 2, (entry,), T0 - 86400 - 300, T0 + 29 * 86400, b1.digest)
    others = [B.Bundle("other", e, (entry,), T0 - 50 * 86400, T0 + 86400,
                       fixed(f"other prev {e}", 32)) for e in (1, 2, 3)]
    log_order = [(others[0], T0 - 45 * 86400), (b1, T0 - 40 * 86400 + 60),
                 (others[1], T0 - 20 * 86400), (b2, T0 - 86400),
                 (others[2], T0 - 3600)]
    statements = [B.statement(b, ts) for b, ts in log_order]
    leaves = [merkle.hash_leaf(st) for st in statements]
    size, leaf_index, seen_size = len(leaves), 3, 2
    root = merkle.root(leaves)
    sth = B.tree_head(size, root, T0 - 60, namespace, b2.epoch, b2.digest)
    signed = B.SignedBundle(
        bundle=b2.canonical(), operator_sig=operator_sk.sign(b2.canonical()),
        statement=statements[leaf_index], witness_sig=witness_sk.sign(statements[leaf_index]),
        leaf_index=leaf_index, inclusion=merkle.inclusion_proof(leaves, leaf_index),
        sth=sth, sth_sig=witness_sk.sign(sth),
        consistency=merkle.consistency_proof(leaves, seen_size))
    state_before = B.TrustState(seen_size, merkle.root(leaves[:seen_size]),
                                {namespace: [1, b1.digest.hex()]})
    state_after = B.TrustState(seen_size, state_before.tree_root, dict(state_before.epochs))
    verified = B.verify(signed, ed_pub(operator_sk), ed_pub(witness_sk), state_after, T0,
                        B.MAX_HEAD_AGE)
    assert verified == b2
    return {
        "namespace": namespace,
        "operator_key": {"private_key": ed_priv(operator_sk).hex(),
                         "public_key": ed_pub(operator_sk).hex()},
        "witness_key": {"private_key": ed_priv(witness_sk).hex(),
                        "public_key": ed_pub(witness_sk).hex()},
        "channel_ca": channel_ca.hex(),
        "fleet_entry": {"fleet_id": fleet_id, "role": "current",
                        "opaque_server_key": server_pk.hex(), "enroll_key": enroll_pk.hex(),
                        "ksf": [[k, v] for k, v in ksf_pairs],
                        "max_attempts": max_attempts_default, "endpoints": endpoints,
                        "deployment": D.digest(dep_record).hex(), "channel_ca": channel_ca.hex()},
        "bundle_epoch_1": {"bundle": b1.canonical().hex(), "digest": b1.digest.hex()},
        "bundle": {"version": b2.version, "epoch": b2.epoch, "not_before": b2.not_before,
                   "not_after": b2.not_after, "prev_hash": b2.prev_hash.hex(),
                   "bundle": b2.canonical().hex(), "digest": b2.digest.hex(),
                   "operator_sig": signed.operator_sig.hex()},
        "log": [{"statement": st.hex(), "leaf_hash": lh.hex()}
                for st, lh in zip(statements, leaves, strict=True)],
        "statement": {"timestamp": log_order[leaf_index][1],
                      "statement": signed.statement.hex(),
                      "witness_sig": signed.witness_sig.hex(), "leaf_index": leaf_index},
        "tree_head": {"size": size, "root": root.hex(), "timestamp": T0 - 60,
                      "sth": sth.hex(), "sth_sig": signed.sth_sig.hex()},
        "inclusion": hexed(signed.inclusion),
        "client_state_before": {"tree_size": seen_size, "tree_root": state_before.tree_root.hex(),
                                "epochs": {namespace: [1, b1.digest.hex()]}},
        "consistency": hexed(signed.consistency),
        "client_state_after": {"tree_size": state_after.tree_size,
                               "tree_root": state_after.tree_root.hex(),
                               "epochs": state_after.epochs},
        "verify_at": T0, "max_head_age": B.MAX_HEAD_AGE,
        "trust_reply": P.pack(signed.to_wire()).hex(),
        "deployment": {
            "record": dep_record.hex(), "operator_sig": dep_sig.hex(),
            "node_statements": [{"statement": st.hex(), "signature": sig.hex()}
                                for st, sig in node_statements],
            "reply": P.pack({"record": dep_record, "operator_sig": dep_sig}).hex()},
    }
