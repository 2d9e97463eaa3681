"""Sealing: authenticated encryption of secrets at rest and in transit.

* :func:`seal` / :func:`unseal`: AES-256-GCM, random 96-bit nonce, with
  associated data that binds the blob to its purpose (user id, record
  version, token kind).  Output: ``version(1) || nonce(12) || ct||tag``.
* :func:`hpke_seal` / :func:`hpke_open`: RFC 9180 HPKE base mode,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, from
  ``cryptography``.  Clients encrypt a new secret to the fleet's enrollment
  key so that it never crosses the network in the clear.
* :func:`session_subkey`: a purpose-bound key derived from an OPAQUE session
  key (HKDF-SHA512), used to encrypt a released secret to the one client that
  completed the login, and to authenticate requests that need proof of the
  recovery code.

All failures raise :class:`~vault_raft.crypto.errors.SealError`.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault_raft.crypto.errors import SealError

KEY_LEN = 32
_VERSION = b"\x01"
_NONCE = 12
_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def new_key() -> bytes:
    return os.urandom(KEY_LEN)


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise SealError("key must be 32 bytes")


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return seal_with_nonce(key, plaintext, ad, os.urandom(_NONCE))


def seal_with_nonce(key: bytes, plaintext: bytes, ad: bytes, nonce: bytes) -> bytes:
    """:func:`seal` with the nonce given: the deterministic seam the protocol's
    conformance vectors are made with (``vault_raft/ops/protocol_vectors.py``).
    Everything else calls :func:`seal`, which draws a fresh random nonce: a
    nonce must never be used twice under one key."""
    _check_key(key)
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != _NONCE:
        raise SealError("nonce must be 12 bytes")
    return _VERSION + bytes(nonce) + AESGCM(key).encrypt(bytes(nonce), plaintext, ad)


def unseal(key: bytes, blob: bytes, ad: bytes) -> bytes:
    _check_key(key)
    if not isinstance(blob, (bytes, bytearray)) or len(blob) < 1 + _NONCE + 16 \
            or blob[:1] != _VERSION:
        raise SealError("sealed blob malformed")
    try:
        return AESGCM(key).decrypt(blob[1:1 + _NONCE], blob[1 + _NONCE:], ad)
    except InvalidTag:
        raise SealError("sealed blob failed authentication") from None


def hpke_keypair() -> tuple[bytes, bytes]:
    """(private, public) X25519 raw bytes."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def hpke_seal(public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    try:
        pk = X25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise SealError("bad HPKE public key") from None
    return _HPKE.encrypt(plaintext, pk, info)


def hpke_open(private_key: bytes, ciphertext: bytes, info: bytes) -> bytes:
    try:
        sk = X25519PrivateKey.from_private_bytes(private_key)
        return _HPKE.decrypt(ciphertext, sk, info)
    except (ValueError, InvalidTag, TypeError) as exc:
        raise SealError("HPKE ciphertext did not open") from exc
    except Exception as exc:  # the binding raises its own types on malformed input
        raise SealError("HPKE ciphertext did not open") from exc


def session_subkey(session_key: bytes, purpose: bytes) -> bytes:
    info = b"vault-raft session v1 " + purpose
    return HKDF(hashes.SHA512(), KEY_LEN, None, info).derive(session_key)


def mac(key: bytes, msg: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(msg)
    return h.finalize()


def mac_ok(key: bytes, msg: bytes, tag: bytes) -> bool:
    return isinstance(tag, (bytes, bytearray)) and constant_time.bytes_eq(mac(key, msg), bytes(tag))


def length_prefixed(*parts: bytes) -> bytes:
    """Unambiguous concatenation for associated data."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)
