"""Fleet keys held by a node, behind the small :class:`Keystore` interface.

The interface exposes *operations*, never raw keys, except the cluster
secret (pysyncobj needs it as a password) -- so an HSM/PKCS#11 backend can
implement it with keys that never leave the device.

Keys (all generated at ``fleet init``, the same on every node of a fleet):

================  ============================================================
opaque_setup      OPAQUE OPRF seed + server AKE key pair
seal_key          AES-256-GCM key sealing users' secrets at rest
token_key         AES-256-GCM key sealing KE2->KE3 server state into tokens,
                  and enroll/start tickets (another associated data)
enroll key        X25519 HPKE key: clients encrypt new secrets to it
cluster_secret    unused: Raft traffic is mutual TLS with fleet certificates;
                  kept so that keystore files keep their format
node identity     Ed25519, one per node: signs the node's deployment statement
================  ============================================================

:class:`FileKeystore` stores them in one msgpack file of mode 0600 and
refuses to load a file readable by group or others.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Protocol

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault_raft.crypto import seal as S
from vault_raft.crypto.errors import CryptoError, SealError
from vault_raft.crypto.opaque import ServerSetup
from vault_raft.errors import EXIT_USAGE, VaultRaftError
from vault_raft.storage.files import atomic_write
from vault_raft.trust.deployment import KEY_STATEMENT_V

KEYSTORE_VERSION = 1


class KeystoreError(VaultRaftError):
    """The keystore file is missing, unreadable, too permissive or malformed."""

    exit_code = EXIT_USAGE


def _secret_ad(user: bytes, version: bytes) -> bytes:
    return S.length_prefixed(b"vault-raft secret v1", user, version)


class Keystore(Protocol):
    fleet_id: str

    def opaque_setup(self) -> ServerSetup: ...
    def seal_secret(self, user: bytes, version: bytes, plaintext: bytes) -> bytes: ...
    def unseal_secret(self, user: bytes, version: bytes, blob: bytes) -> bytes: ...
    def seal_token(self, payload: bytes) -> bytes: ...
    def open_token(self, blob: bytes) -> bytes: ...
    def seal_ticket(self, payload: bytes) -> bytes: ...
    def open_ticket(self, blob: bytes) -> bytes: ...
    def open_upload(self, ciphertext: bytes, info: bytes) -> bytes: ...
    def cluster_secret(self) -> str: ...
    def enroll_public_key(self) -> bytes: ...


def read_private(path: str, what: str) -> bytes:
    """Read a private-key file, refusing one that group or others can access."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeystoreError(f"{what} {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeystoreError(f"{what} {path} is accessible by group/others "
                            f"(mode {oct(st.st_mode & 0o777)}); chmod 600 it")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise KeystoreError(f"{what} {path}: {exc.strerror}") from None


def new_signing_key_file(path: str) -> bytes:
    """Generate an Ed25519 key into ``path`` (0600, refuses to overwrite); returns
    the public key."""
    if os.path.exists(path):
        raise KeystoreError(f"{path} exists: refusing to overwrite a signing key")
    sk = Ed25519PrivateKey.generate()
    atomic_write(path, sk.private_bytes_raw())
    return sk.public_key().public_bytes_raw()


def load_signing_key(path: str, what: str = "signing key") -> Ed25519PrivateKey:
    raw = read_private(path, what)
    if len(raw) != 32:
        raise KeystoreError(f"{what} {path} is malformed (expected 32 bytes)")
    return Ed25519PrivateKey.from_private_bytes(raw)


class FileKeystore:
    """All fleet keys in one 0600 msgpack file."""

    def __init__(self, fleet_id: str, opaque_setup: bytes, seal_key: bytes, token_key: bytes,
                 enroll_sk: bytes, enroll_pk: bytes, cluster_secret: str,
                 node_id: str | None = None, node_sk: bytes | None = None):
        self.fleet_id = fleet_id
        self._opaque = ServerSetup.from_bytes(opaque_setup)
        for k in (seal_key, token_key, enroll_sk):
            if len(k) != 32:
                raise KeystoreError("keystore: keys must be 32 bytes")
        self._seal_key, self._token_key = seal_key, token_key
        self._enroll_sk, self._enroll_pk = enroll_sk, enroll_pk
        self._cluster_secret = cluster_secret
        self.node_id = node_id
        self._node_sk = Ed25519PrivateKey.from_private_bytes(node_sk) if node_sk else None

    def __repr__(self) -> str:
        return f"FileKeystore(fleet_id={self.fleet_id!r})"

    @classmethod
    def generate(cls, fleet_id: str) -> FileKeystore:
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
            "node_id": self.node_id,
            "node_sk": self._node_sk.private_bytes_raw() if self._node_sk else None,
        }, use_bin_type=True)
        atomic_write(path, data)
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: str) -> FileKeystore:
        data = read_private(path, "keystore")
        try:
            d = msgpack.unpackb(data, raw=False)
            if d.get("v") != KEYSTORE_VERSION:
                raise KeystoreError(f"keystore {path}: unknown version")
            return cls(d["fleet_id"], d["opaque_setup"], d["seal_key"], d["token_key"],
                       d["enroll_sk"], d["enroll_pk"], d["cluster_secret"], d.get("node_id"),
                       d.get("node_sk"))
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

    def seal_ticket(self, payload: bytes) -> bytes:
        return S.seal(self._token_key, payload, b"vault-raft ticket v1 " + self.fleet_id.encode())

    def open_ticket(self, blob: bytes) -> bytes:
        return S.unseal(self._token_key, blob, b"vault-raft ticket v1 " + self.fleet_id.encode())

    def open_upload(self, ciphertext: bytes, info: bytes) -> bytes:
        return S.hpke_open(self._enroll_sk, ciphertext, info)

    def cluster_secret(self) -> str:
        return self._cluster_secret

    def enroll_public_key(self) -> bytes:
        return self._enroll_pk

    # ------------------------------------------------ deployment evidence
    def for_node(self, node_id: str) -> FileKeystore:
        """A copy of the fleet keys with a fresh identity key for one node."""
        return FileKeystore(self.fleet_id, self._opaque.to_bytes(), self._seal_key,
                            self._token_key, self._enroll_sk, self._enroll_pk,
                            self._cluster_secret, node_id,
                            Ed25519PrivateKey.generate().private_bytes_raw())

    def key_statement(self, created: int) -> tuple[bytes, bytes]:
        """The node's signed statement of the keys it holds: public keys in
        full, secret keys as SHA-256 commitments (never the keys).  Returns
        (statement, signature by the node's identity key)."""
        if self._node_sk is None:
            raise KeystoreError("this keystore has no node identity key")
        st = key_statement(self.fleet_id, self.node_id or "",
                           self._node_sk.public_key().public_bytes_raw(), {
                               "opaque_server": self._opaque.public_key,
                               "enroll": self._enroll_pk,
                               "seal_key#sha256": _commit(b"seal", self._seal_key),
                               "token_key#sha256": _commit(b"token", self._token_key),
                               "opaque_setup#sha256": _commit(b"opaque", self._opaque.to_bytes()),
                               "cluster_secret#sha256": _commit(
                                   b"cluster", self._cluster_secret.encode()),
                           }, created)
        return st, self._node_sk.sign(st)




def _commit(label: bytes, secret: bytes) -> bytes:
    return hashlib.sha256(b"vault-raft key commitment v1 " + label + b"\0" + secret).digest()


def key_statement(fleet_id: str, node_id: str, node_pk: bytes, keys: dict, created: int) -> bytes:
    return msgpack.packb([KEY_STATEMENT_V, fleet_id, node_id, node_pk, sorted(keys.items()),
                          created], use_bin_type=True)


__all__ = ["Keystore", "FileKeystore", "KeystoreError", "SealError"]
