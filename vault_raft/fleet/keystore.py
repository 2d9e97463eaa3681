"""Fleet keys held by a node, behind the small :class:`Keystore` interface.

The interface exposes *operations*, never raw keys, except the cluster
secret (pysyncobj needs it as a password) -- so an HSM/PKCS#11 backend can
implement it with keys that never leave the device.

Keys (all generated at ``fleet init``, the same on every node of a fleet):

================  ============================================================
opaque_setup      OPAQUE OPRF seed + server AKE key pair
seal_key          AES-256-GCM key sealing users' secrets at rest
token_key         AES-256-GCM key sealing KE2->KE3 server state into tokens
enroll key        X25519 HPKE key: clients encrypt new secrets to it
cluster_secret    authenticates and encrypts node-to-node Raft traffic
================  ============================================================

:class:`FileKeystore` stores them in one msgpack file of mode 0600 and
refuses to load a file readable by group or others.
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

import msgpack

from ..crypto import seal as S
from ..crypto.errors import CryptoError, SealError
from ..crypto.opaque import ServerSetup
from ..replica.journal import atomic_write

KEYSTORE_VERSION = 1


class KeystoreError(Exception):
    """The keystore file is missing, unreadable, too permissive or malformed."""


def _secret_ad(user: bytes, version: bytes) -> bytes:
    return S.length_prefixed(b"vault-raft secret v1", user, version)


class Keystore(Protocol):
    fleet_id: str

    def opaque_setup(self) -> ServerSetup: ...
    def seal_secret(self, user: bytes, version: bytes, plaintext: bytes) -> bytes: ...
    def unseal_secret(self, user: bytes, version: bytes, blob: bytes) -> bytes: ...
    def seal_token(self, payload: bytes) -> bytes: ...
    def open_token(self, blob: bytes) -> bytes: ...
    def open_upload(self, ciphertext: bytes, info: bytes) -> bytes: ...
    def cluster_secret(self) -> str: ...
    def enroll_public_key(self) -> bytes: ...


class FileKeystore:
    """All fleet keys in one 0600 msgpack file."""

    def __init__(self, fleet_id: str, opaque_setup: bytes, seal_key: bytes, token_key: bytes,
                 enroll_sk: bytes, enroll_pk: bytes, cluster_secret: str):
        self.fleet_id = fleet_id
        self._opaque = ServerSetup.from_bytes(opaque_setup)
        for k in (seal_key, token_key, enroll_sk):
            if len(k) != 32:
                raise KeystoreError("keystore: keys must be 32 bytes")
        self._seal_key, self._token_key = seal_key, token_key
        self._enroll_sk, self._enroll_pk = enroll_sk, enroll_pk
        self._cluster_secret = cluster_secret

    def __repr__(self) -> str:
        return f"FileKeystore(fleet_id={self.fleet_id!r})"

    @classmethod
    def generate(cls, fleet_id: str) -> "FileKeystore":
        sk, pk = S.hpke_keypair()
        return cls(fleet_id, ServerSetup.generate().to_bytes(), S.new_key(), S.new_key(), sk, pk,
                   os.urandom(32).hex())

    # ---------------------------------------------------------- storage
    def save(self, path: str) -> None:
        data = msgpack.packb({
            "v": KEYSTORE_VERSION, "fleet_id": self.fleet_id,
            "opaque_setup": self._opaque.to_bytes(), "seal_key": self._seal_key,
            "token_key": self._token_key, "enroll_sk": self._enroll_sk,
            "enroll_pk": self._enroll_pk, "cluster_secret": self._cluster_secret,
        }, use_bin_type=True)
        atomic_write(path, data)
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: str) -> "FileKeystore":
        try:
            st = os.stat(path)
        except OSError as exc:
            raise KeystoreError(f"keystore {path}: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeystoreError(f"keystore {path} is accessible by group/others "
                                f"(mode {oct(st.st_mode & 0o777)}); chmod 600 it")
        try:
            with open(path, "rb") as f:
                d = msgpack.unpackb(f.read(), raw=False)
            if d.get("v") != KEYSTORE_VERSION:
                raise KeystoreError(f"keystore {path}: unknown version")
            return cls(d["fleet_id"], d["opaque_setup"], d["seal_key"], d["token_key"],
                       d["enroll_sk"], d["enroll_pk"], d["cluster_secret"])
        except (KeyError, TypeError, ValueError, AttributeError, CryptoError,
                msgpack.ExtraData, msgpack.FormatError) as exc:
            raise KeystoreError(f"keystore {path} is malformed: {exc}") from None

    # ------------------------------------------------------- operations
    def opaque_setup(self) -> ServerSetup:
        return self._opaque

    def seal_secret(self, user: bytes, version: bytes, plaintext: bytes) -> bytes:
        return S.seal(self._seal_key, plaintext, _secret_ad(user, version))

    def unseal_secret(self, user: bytes, version: bytes, blob: bytes) -> bytes:
        return S.unseal(self._seal_key, blob, _secret_ad(user, version))

    def seal_token(self, payload: bytes) -> bytes:
        return S.seal(self._token_key, payload, b"vault-raft token v1 " + self.fleet_id.encode())

    def open_token(self, blob: bytes) -> bytes:
        return S.unseal(self._token_key, blob, b"vault-raft token v1 " + self.fleet_id.encode())

    def open_upload(self, ciphertext: bytes, info: bytes) -> bytes:
        return S.hpke_open(self._enroll_sk, ciphertext, info)

    def cluster_secret(self) -> str:
        return self._cluster_secret

    def enroll_public_key(self) -> bytes:
        return self._enroll_pk


__all__ = ["Keystore", "FileKeystore", "KeystoreError", "SealError"]
