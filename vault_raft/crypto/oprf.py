"""The OPRF of RFC 9497 in base mode (``modeOPRF``), suite ristretto255-SHA512.

Only what OPAQUE needs: DeriveKeyPair, Blind, BlindEvaluate, Finalize.  The
blind is an explicit argument so that RFC test vectors can be replayed; the
public OPAQUE API draws it from libsodium's CSPRNG.
"""

from __future__ import annotations

import hashlib

from vault_raft.crypto import group
from vault_raft.crypto.errors import OpaqueError

IDENTIFIER = b"ristretto255-SHA512"
MODE_OPRF = 0x00
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + IDENTIFIER
_HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
_DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING


def _i2osp2(n: int) -> bytes:
    if n > 0xFFFF:
        raise OpaqueError("length does not fit in two bytes")
    return n.to_bytes(2, "big")


def derive_secret_key(seed: bytes, info: bytes) -> bytes:
    """RFC 9497 section 3.2.1, the skS half of DeriveKeyPair (what a server
    that never publishes pkS -- base mode -- needs: one base multiplication less)."""
    derive_input = seed + _i2osp2(len(info)) + info
    for counter in range(256):
        sk = group.hash_to_scalar(derive_input + bytes([counter]), _DERIVE_KEY_PAIR_DST)
        if not group.is_zero_scalar(sk):
            return sk
    raise OpaqueError("DeriveKeyPairError")  # probability ~2^-252 * 256


def derive_key_pair(seed: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9497 section 3.2.1: deterministic (skS, pkS) from a 32-byte seed."""
    sk = derive_secret_key(seed, info)
    return sk, group.scalar_mult_base(sk)


def blind(password: bytes, blind_scalar: bytes) -> bytes:
    """Blind(input, blind) -> blindedElement; input is hashed to the group."""
    input_element = group.hash_to_group(password, _HASH_TO_GROUP_DST)
    return group.scalar_mult(blind_scalar, input_element)


def blind_evaluate(sk: bytes, blinded_element: bytes) -> bytes:
    """Server side: ``sk * blindedElement`` (element already validated)."""
    return group.scalar_mult(sk, blinded_element)


def finalize(password: bytes, blind_scalar: bytes, evaluated_element: bytes) -> bytes:
    """Client side: unblind and hash to the 64-byte OPRF output."""
    n = group.scalar_mult(group.scalar_invert(blind_scalar), evaluated_element)
    hash_input = _i2osp2(len(password)) + password + _i2osp2(len(n)) + n + b"Finalize"
    return hashlib.sha512(hash_input).digest()
