"""The ristretto255 prime-order group, through libsodium (bundled by ``rbcl``).

This module is the only place that talks to the curve binding.  It adds the
checks the binding leaves to the caller:

* element deserialisation rejects non-canonical encodings (libsodium does)
  *and* the identity element (libsodium's ``is_valid_point`` accepts it);
* scalar deserialisation rejects values >= the group order;
* scalar multiplication never returns the identity (libsodium refuses).

Everything else (hash-to-group, hash-to-scalar) follows RFC 9380 / RFC 9496
with ``expand_message_xmd`` over SHA-512, which ``cryptography`` does not
provide; it is a few lines of hashing, checked by the RFC 9807 vectors.
"""

from __future__ import annotations

import hashlib
import os
import sys

import rbcl

from vault_raft.crypto.errors import OpaqueError


def _delete_rbcl_library_copy() -> None:
    """rbcl writes its bundled libsodium (2.8 MB) to a new file in the temp
    directory on every import and never deletes it: each node start and each
    CLI call left one behind (13,844 files, 37 GB, on the project's machine
    when this was found).  Once loaded, the mapping does not need the file."""
    path = getattr(sys.modules.get("rbcl._sodium"), "lib_path", None)
    if isinstance(path, str) and path.endswith((".so", ".pyd")):
        try:
            os.unlink(path)
        except OSError:
            pass  # (Windows cannot delete a loaded library; nothing else to do)


_delete_rbcl_library_copy()

ELEMENT_LEN = 32  # Noe
SCALAR_LEN = 32  # Nok / Nsk
_IDENTITY = bytes(32)
_ZERO = bytes(32)


def expand_message_xmd_sha512(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1, instantiated with SHA-512 (b=64, s=128)."""
    if len(dst) > 255 or not 0 < length <= 255 * 64 or length > 65535:
        raise OpaqueError("expand_message_xmd: bad DST or output length")
    ell = -(-length // 64)
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(128) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha512(msg_prime).digest()
    bi = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [bi]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, bi, strict=True))
        bi = hashlib.sha512(mixed + bytes([i]) + dst_prime).digest()
        out.append(bi)
    return b"".join(out)[:length]


def hash_to_group(msg: bytes, dst: bytes) -> bytes:
    """hash_to_ristretto255 (RFC 9380 appendix B / RFC 9496 one-way map)."""
    return element_from_uniform(expand_message_xmd_sha512(msg, dst, 64))


def element_from_uniform(uniform: bytes) -> bytes:
    """The RFC 9496 one-way map of 64 uniform bytes to an element."""
    if len(uniform) != 64:
        raise OpaqueError("element_from_uniform: expected 64 bytes")
    return rbcl.crypto_core_ristretto255_from_hash(uniform)


def hash_to_scalar(msg: bytes, dst: bytes) -> bytes:
    """HashToScalar of RFC 9497 section 4.1: 64 uniform bytes reduced mod L."""
    return rbcl.crypto_core_ristretto255_scalar_reduce(expand_message_xmd_sha512(msg, dst, 64))


def check_element(data: bytes, what: str = "element") -> bytes:
    """Deserialise an element: 32 bytes, canonical, not the identity."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != ELEMENT_LEN:
        raise OpaqueError(f"{what}: expected {ELEMENT_LEN} bytes")
    data = bytes(data)
    if data == _IDENTITY or not rbcl.crypto_core_ristretto255_is_valid_point(data):
        raise OpaqueError(f"{what}: not a valid non-identity ristretto255 element")
    return data


def check_scalar(data: bytes, what: str = "scalar") -> bytes:
    """Deserialise a scalar: 32 bytes, canonical (< L), not zero."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != SCALAR_LEN:
        raise OpaqueError(f"{what}: expected {SCALAR_LEN} bytes")
    data = bytes(data)
    if rbcl.crypto_core_ristretto255_scalar_reduce(data + bytes(32)) != data or data == _ZERO:
        raise OpaqueError(f"{what}: not a canonical non-zero scalar")
    return data


def is_zero_scalar(s: bytes) -> bool:
    return s == _ZERO


def scalar_mult(scalar: bytes, element: bytes) -> bytes:
    """``scalar * element``; the caller has validated both inputs."""
    try:
        return rbcl.crypto_scalarmult_ristretto255(scalar, element)
    except (RuntimeError, ValueError) as exc:  # identity result or bad input
        raise OpaqueError("scalar multiplication produced an invalid element") from exc


def scalar_mult_base(scalar: bytes) -> bytes:
    try:
        return rbcl.crypto_scalarmult_ristretto255_base(scalar)
    except (RuntimeError, ValueError) as exc:
        raise OpaqueError("base scalar multiplication failed") from exc


def scalar_invert(scalar: bytes) -> bytes:
    try:
        return rbcl.crypto_core_ristretto255_scalar_invert(scalar)
    except (RuntimeError, ValueError) as exc:
        raise OpaqueError("cannot invert a zero scalar") from exc


def random_scalar() -> bytes:
    """A uniformly random non-zero scalar (libsodium's generator)."""
    return rbcl.crypto_core_ristretto255_scalar_random()
