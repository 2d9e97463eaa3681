"""The fixed inputs of the protocol's conformance vectors: every key and every
"random" value is named by a label and derived from it (labelled SHA-512 of a
constant), so :mod:`vault_raft.ops.protocol_vectors` makes the same file on
every run; and the helpers that keep the previous file's HPKE uploads."""

from __future__ import annotations

import datetime
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault_raft.crypto import group
from vault_raft.crypto import seal as S
from vault_raft.crypto.errors import SealError
from vault_raft.raft.pki import ca_certificate

_SEED = b"vault-raft protocol v1 conformance vectors"

# Fixed times: Unix seconds (T) and the node's clock in ms.
T0 = 1_790_000_000
T0_MS = T0 * 1000


def fixed(label: str, n: int) -> bytes:
    """``n`` bytes named ``label``: SHA-512(seed || 0x00 || label || counter) blocks."""
    out, i = b"", 0
    while len(out) < n:
        out += hashlib.sha512(_SEED + b"\0" + label.encode() + i.to_bytes(4, "big")).digest()
        i += 1
    return out[:n]


def fixed_scalar(label: str) -> bytes:
    """A non-zero ristretto255 scalar named ``label``."""
    return group.hash_to_scalar(label.encode(), _SEED)


def ed25519_key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(fixed(label, 32))


def ed_pub(sk: Ed25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes_raw()


def ed_priv(sk: Ed25519PrivateKey) -> bytes:
    return sk.private_bytes_raw()


def hexed(x):
    """Bytes as hex, recursively (lists, dicts); other values as they are."""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).hex()
    if isinstance(x, (list, tuple)):
        return [hexed(v) for v in x]
    if isinstance(x, dict):
        return {k: hexed(v) for k, v in x.items()}
    return x


def _get(previous: dict | None, *path):
    node = previous
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def kept_upload(previous: dict | None, path: tuple, recipient_sk: bytes, recipient_pk: bytes,
            info: bytes, plaintext: bytes) -> bytes:
    """An HPKE upload: the previous file's, if it still opens to ``plaintext``
    under ``info``; else a new one (``cryptography`` draws the ephemeral key)."""
    prev = _get(previous, *path)
    if isinstance(prev, dict) and prev.get("info") == info.hex() \
            and prev.get("plaintext") == plaintext.hex() \
            and prev.get("recipient_public_key") == recipient_pk.hex():
        try:
            ct = bytes.fromhex(prev["ciphertext"])
            if S.hpke_open(recipient_sk, ct, info) == plaintext:
                return ct
        except (SealError, ValueError, TypeError, KeyError):
            pass
    return S.hpke_seal(recipient_pk, plaintext, info)


def channel_ca_der(fleet_id: str, sk: Ed25519PrivateKey) -> bytes:
    """A fleet CA certificate (DER) in the profile ``fleet init`` makes
    (``raft/pki.py``), with fixed key, serial and dates: Ed25519 signatures
    are deterministic, so is the certificate."""
    start = datetime.datetime.fromtimestamp(T0 - 30 * 86400, datetime.UTC)
    cert = ca_certificate(fleet_id, sk, int.from_bytes(fixed("ca serial", 8), "big") >> 1,
                          start)
    return cert.public_bytes(serialization.Encoding.DER)
