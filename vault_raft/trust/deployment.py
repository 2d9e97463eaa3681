"""Deployment evidence: which keys a new fleet's nodes hold, signed by each node
and assembled by the operator into a record that is logged through the bundle.

At ``fleet init`` every node's keystore signs a *key statement* with its own
identity key (:meth:`FileKeystore.key_statement`): the public keys in full and
SHA-256 commitments to the secret ones.  When the operator publishes the fleet
it signs a **deployment record** (every node statement, for one fleet id) and
puts the record's SHA-256 into the fleet's bundle entry, so the witness's log
commits to it.  :func:`verify` is what ``vault-raft fleet verify-deployment``
runs: anyone holding the operator's public key can check that the fleet in a
verified bundle is the one whose nodes made these statements.
"""

from __future__ import annotations

import hashlib

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from vault_raft.errors import VaultRaftError
from vault_raft.trust.bundle import FleetEntry

KEY_STATEMENT_V = "vault-raft node keys v1"  # what a node's keystore signs

RECORD_V = "vault-raft deployment v1"
MAX_NODES = 64


class DeploymentError(VaultRaftError):
    """The deployment record does not prove what it should (message says what)."""


def _unpack(data: bytes, what: str):
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
        raise DeploymentError(f"{what} does not decode") from None


def assemble(fleet_id: str, statements: list[tuple[bytes, bytes]],
             operator_sk: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """The operator's signed record; returns (record, signature)."""
    record = msgpack.packb([RECORD_V, fleet_id, [[st, sig] for st, sig in statements]],
                           use_bin_type=True)
    return record, operator_sk.sign(record)


def digest(record: bytes) -> bytes:
    return hashlib.sha256(record).digest()


def verify(record: bytes, operator_sig: bytes, operator_pk: bytes,
           entry: FleetEntry) -> list[dict]:
    """Check a deployment record against a fleet entry from a *verified* bundle.

    Returns one summary per node; raises :class:`DeploymentError` naming the
    first failure."""
    if digest(record) != entry.deployment:
        raise DeploymentError("the record's digest is not the one the bundle commits to")
    try:
        Ed25519PublicKey.from_public_bytes(operator_pk).verify(operator_sig, record)
    except (InvalidSignature, ValueError):
        raise DeploymentError("the operator's signature on the record does not verify") from None
    body = _unpack(record, "deployment record")
    if not (isinstance(body, list) and len(body) == 3 and body[0] == RECORD_V):
        raise DeploymentError("not a deployment record")
    _, fleet_id, statements = body
    if fleet_id != entry.fleet_id:
        raise DeploymentError(f"record is for fleet {fleet_id}, bundle names {entry.fleet_id}")
    if not isinstance(statements, list) or not 1 <= len(statements) <= MAX_NODES:
        raise DeploymentError("record holds no node statements")
    out, ids, node_keys = [], set(), set()
    for item in statements:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes)
                                                                   for x in item)):
            raise DeploymentError("a node statement is malformed")
        st, sig = item
        fields = _unpack(st, "node statement")
        if not (isinstance(fields, list) and len(fields) == 6 and fields[0] == KEY_STATEMENT_V):
            raise DeploymentError("a node statement is malformed")
        _, fid, node_id, node_pk, keys, created = fields
        try:
            Ed25519PublicKey.from_public_bytes(node_pk).verify(sig, st)
        except (InvalidSignature, ValueError, TypeError):
            raise DeploymentError(f"node {node_id}: its signature does not verify") from None
        if fid != entry.fleet_id:
            raise DeploymentError(f"node {node_id} speaks for fleet {fid}")
        if node_id in ids or node_pk in node_keys:
            raise DeploymentError(f"node {node_id} (or its key) appears twice")
        ids.add(node_id)
        node_keys.add(node_pk)
        keys = dict(keys)
        if keys.get("opaque_server") != entry.opaque_server_key:
            raise DeploymentError(f"node {node_id} holds another OPAQUE server key than the "
                                  "bundle's")
        if keys.get("enroll") != entry.enroll_key:
            raise DeploymentError(f"node {node_id} holds another enrollment key than the bundle's")
        out.append({"node": node_id, "node_key": node_pk.hex(), "created": created,
                    "keys": sorted(keys)})
    commitments = {tuple(sorted((k, v) for k, v in dict(_unpack(st, "")[4]).items()))
                   for st, _ in statements}
    if len(commitments) != 1:
        raise DeploymentError("the nodes do not hold the same fleet keys")
    if len(out) != len(entry.endpoints):
        raise DeploymentError(f"{len(out)} node statements for {len(entry.endpoints)} endpoints")
    return out
