"""The documented exception types of :mod:`vault_raft.crypto`.

Every function in this package either returns a complete result or raises
one of these.  Nothing returns partial output, and no lower-level exception
(``ValueError`` from a binding, ``InvalidTag`` from ``cryptography``) escapes.
"""

from __future__ import annotations

from vault_raft.errors import VaultRaftError


class CryptoError(VaultRaftError):
    """Base class of every error raised by :mod:`vault_raft.crypto`."""


class OpaqueError(CryptoError):
    """An OPAQUE message was malformed or failed authentication.

    Raised for wrong lengths, non-canonical or identity group elements, zero
    scalars, a bad envelope MAC (the client used a wrong password), a bad
    server MAC (KE2 altered or from another server) and a bad client MAC
    (KE3 altered or wrong password).  The message says which check failed;
    callers must not reveal it to a remote party beyond "authentication
    failed".
    """


class SealError(CryptoError):
    """A sealed blob could not be opened (wrong key, wrong associated data,
    truncated or altered ciphertext) or a key had the wrong size."""


class SignatureError(CryptoError):
    """A signature or public key was malformed or did not verify."""
