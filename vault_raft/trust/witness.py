"""The witness: an independent co-signer with an append-only Merkle log.

It co-signs a fleet-key bundle only if the bundle keeps the rules, per
namespace: epochs rise by exactly one, a digest is never reused, an epoch is
never published twice, and every epoch is signed by the operator key that
published epoch 1 of the namespace (so nobody else can burn its epochs).  A
namespace is created (its epoch 1 logged) only for an operator key that the
witness's own operator registered (:class:`OperatorRegistry`,
``vault-raft witness register``): nobody can grow the log, and every node's
copy of it, with throwaway keys.  Bundles are capped in size and each
operator key, and the log as a whole, in how fast they may add entries
(:class:`Limits`).  Every co-signed statement is appended to an RFC
9162 log (:mod:`.merkle`).  The log is a file of length-prefixed, checksummed
records, each appended and fsynced before the co-signature is returned.  On
start the witness replays the file and refuses to run on a damaged one rather
than rewrite history: a log that loses entries would let the operator fork it.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault_raft.errors import VaultRaftError
from vault_raft.storage.files import atomic_write, fsync_dir
from vault_raft.trust import bundle as B
from vault_raft.trust import merkle

_REC = struct.Struct("<II")  # length, crc32


class WitnessRefused(VaultRaftError):
    """The bundle breaks a co-signing rule (the message says which)."""


class NotRegistered(WitnessRefused):
    """A new namespace from an operator key the witness's operator did not register."""


class TooLarge(WitnessRefused):
    pass


class RateLimited(WitnessRefused):
    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class WitnessLogCorrupt(VaultRaftError):
    pass


class RegistryError(VaultRaftError):
    """``operators.json`` is unreadable (the message says why)."""


OPERATORS_FILE = "operators.json"


class OperatorRegistry:
    """``operators.json`` beside the log: the operator keys allowed to create
    namespaces.  Edited by ``vault-raft witness register|unregister`` (the
    witness's operator, who owns the directory), re-read by a running witness
    whenever the file changes."""

    MAX_BYTES = 1 << 20  # ~10,000 keys

    def __init__(self, path: str):
        self.path = path
        self._raw: bytes | None = None
        self._keys: dict[str, dict] = {}

    def _reload(self) -> None:
        # The file is small and read on every check: a change is seen even
        # when two writes fall in one tick of the file system's clock.
        try:
            with open(self.path, "rb") as f:
                raw = f.read(self.MAX_BYTES + 1)
        except FileNotFoundError:
            self._keys, self._raw = {}, None
            return
        except OSError as exc:
            raise RegistryError(f"{self.path} is unreadable ({exc})") from None
        if raw == self._raw:
            return
        try:
            if len(raw) > self.MAX_BYTES:
                raise ValueError(f"over {self.MAX_BYTES} bytes")
            d = json.loads(raw)
            if d.get("version") != 1:
                raise ValueError(f"unsupported version {d.get('version')!r}")
            keys = {}
            for e in d["operators"]:
                key = bytes.fromhex(e["key"])
                if len(key) != 32:
                    raise ValueError("an operator key is 32 bytes")
                keys[key.hex()] = {"note": str(e.get("note", "")), "added": int(e["added"])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"{self.path} is unreadable ({exc})") from None
        self._keys, self._raw = keys, raw

    def keys(self) -> dict[str, dict]:
        self._reload()
        return dict(self._keys)

    def allowed(self, operator_pk: bytes) -> bool:
        try:
            self._reload()
        except RegistryError as exc:  # a damaged file must not open the door
            raise NotRegistered(f"{exc}: no new namespace is accepted until it is "
                                "fixed") from None
        return operator_pk.hex() in self._keys

    def _write(self, keys: dict[str, dict]) -> None:
        ops = [{"key": k, **v} for k, v in sorted(keys.items(), key=lambda kv: kv[1]["added"])]
        atomic_write(self.path, json.dumps({"version": 1, "operators": ops}, indent=2).encode())
        self._raw = None

    def add(self, operator_pk: bytes, note: str = "", now: int | None = None) -> bool:
        """Register a key; False if it already was."""
        if len(operator_pk) != 32:
            raise ValueError("an operator key is 32 bytes")
        keys = self.keys()
        if operator_pk.hex() in keys:
            return False
        keys[operator_pk.hex()] = {"note": note, "added": int(time.time() if now is None
                                                              else now)}
        self._write(keys)
        return True

    def remove(self, operator_pk: bytes) -> bool:
        keys = self.keys()
        if keys.pop(operator_pk.hex(), None) is None:
            return False
        self._write(keys)
        return True


@dataclass(frozen=True)
class Limits:
    """What the witness accepts (``witness.json`` may override each)."""
    max_bundle_bytes: int = 64 * 1024  # a bundle of a few fleets is ~2 KiB
    operator_per_minute: float = 10.0  # new log entries per operator key...
    operator_burst: int = 20  # ...after a burst of this many
    log_per_minute: float = 60.0  # new log entries, all keys together...
    log_burst: int = 120

    @classmethod
    def from_dict(cls, d: dict) -> Limits:
        out = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                v = d[f.name]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                    raise ValueError(f"{f.name} must be a positive number")
                kind: Any = type(f.default)  # int or float, as the field's default
                out[f.name] = kind(v)
        return cls(**out)


class _Bucket:
    def __init__(self, per_minute: float, burst: int, now: float):
        self.rate, self.burst = per_minute / 60.0, burst
        self.tokens, self.t = float(burst), now

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0: one is)."""
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


class WitnessLog:
    def __init__(self, path: str, signing_key: Ed25519PrivateKey,
                 registry: OperatorRegistry | None = None, limits: Limits = Limits(),
                 clock=time.monotonic):
        self.path = path
        self.sk = signing_key
        self.public_key = signing_key.public_key().public_bytes_raw()
        self.registry = registry or OperatorRegistry(
            os.path.join(os.path.dirname(os.path.abspath(path)), OPERATORS_FILE))
        self.limits = limits
        self._clock = clock
        self._buckets: dict[bytes, _Bucket] = {}
        self._log_bucket = _Bucket(limits.log_per_minute, limits.log_burst, clock())
        self.statements: list[bytes] = []
        self.tree = merkle.HashTree()
        # namespace -> {"epoch", "digests", "operator", "history": [(index, epoch, digest)]}
        self.fleets: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._load()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fsync_dir(path)

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        off = 0
        while off < len(data):
            if len(data) - off < _REC.size:
                raise WitnessLogCorrupt(f"{self.path}: truncated record at {off}")
            length, crc = _REC.unpack_from(data, off)
            body = data[off + _REC.size:off + _REC.size + length]
            if len(body) != length or zlib.crc32(body) != crc:
                raise WitnessLogCorrupt(f"{self.path}: damaged record at {off}; refusing to "
                                        "start (the log must never lose entries)")
            self._apply(body)
            off += _REC.size + length

    def _apply(self, rec: bytes) -> None:
        try:
            st, operator_pk = msgpack.unpackb(rec, raw=False)
            _, ns, _, epoch, digest = msgpack.unpackb(st, raw=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            raise WitnessLogCorrupt(f"{self.path}: a record does not decode") from None
        f = self.fleets.setdefault(ns, {"epoch": 0, "digests": set(), "operator": operator_pk,
                                        "history": []})
        f["epoch"] = epoch
        f["digests"].add(bytes(digest))
        f["history"].append((len(self.statements), epoch, bytes(digest)))
        self.statements.append(st)
        self.tree.append(merkle.hash_leaf(st))

    @property
    def size(self) -> int:
        return len(self.statements)

    def newest(self, namespace: str, size: int) -> tuple[int, bytes]:
        """(epoch, digest) of the namespace's newest bundle among the first
        ``size`` entries; (0, zeros) if none."""
        f = self.fleets.get(namespace)
        if not f:
            return 0, bytes(32)
        hist = f["history"]
        i = bisect.bisect_left(hist, (size,)) - 1
        return (hist[i][1], hist[i][2]) if i >= 0 else (0, bytes(32))

    def _rate(self, operator_pk: bytes) -> None:
        """Take a token for one new entry from the key's bucket and the log's."""
        now = self._clock()
        b = self._buckets.get(operator_pk)
        if b is None:
            b = self._buckets[operator_pk] = _Bucket(self.limits.operator_per_minute,
                                                     self.limits.operator_burst, now)
        wait = max(b.wait(now), self._log_bucket.wait(now))
        if wait > 0:
            raise RateLimited(f"too many bundles: retry in {wait:.0f} s", wait)
        b.take()
        self._log_bucket.take()

    def cosign(self, bundle_bytes: bytes, operator_sig: bytes, operator_pk: bytes,
               timestamp: int) -> tuple[bytes, bytes, int]:
        """Check the rules, log the statement durably, return (statement, signature, index).

        The cheap refusals come first (size, an unregistered key for a new
        namespace, another key than the namespace's), then the signature, and
        only a signed bundle that would grow the log counts against the rates."""
        if len(bundle_bytes) > self.limits.max_bundle_bytes:
            raise TooLarge(f"bundle of {len(bundle_bytes)} bytes; at most "
                           f"{self.limits.max_bundle_bytes} accepted")
        bundle = B.Bundle.from_canonical(bundle_bytes)
        with self._lock:
            f = self.fleets.get(bundle.namespace)
            if f is None:
                if not self.registry.allowed(operator_pk):
                    raise NotRegistered(f"operator key {operator_pk.hex()[:16]}... is not "
                                        "registered with this witness: a new namespace needs "
                                        "a key its operator registered ('vault-raft witness "
                                        "register')")
                f = {"epoch": 0, "digests": set(), "operator": operator_pk}
            if f["operator"] != operator_pk:
                raise WitnessRefused(f"namespace {bundle.namespace} belongs to another "
                                     "operator key")
            B._verify_sig(operator_pk, operator_sig, bundle_bytes, B.BadOperatorSignature,
                          "operator")
            if bundle.digest in f["digests"]:
                # the same bundle again (a retry after a lost answer): same answer
                for i, epoch, digest in f.get("history", []):
                    if (epoch, digest) == (bundle.epoch, bundle.digest):
                        st = self.statements[i]
                        return st, self.sk.sign(st), i
                raise WitnessRefused("this bundle digest was already published")
            if bundle.epoch <= f["epoch"]:
                raise WitnessRefused(f"epoch {bundle.epoch} was already published for "
                                     f"{bundle.namespace}")
            if bundle.epoch != f["epoch"] + 1:
                raise WitnessRefused(f"epochs rise by exactly one: expected {f['epoch'] + 1}, "
                                     f"got {bundle.epoch}")
            self._rate(operator_pk)
            st = B.statement(bundle, timestamp)
            body = msgpack.packb([st, operator_pk], use_bin_type=True)
            os.write(self._fd, _REC.pack(len(body), zlib.crc32(body)) + body)
            os.fsync(self._fd)  # durable before anyone sees the co-signature
            self._apply(body)
            return st, self.sk.sign(st), self.size - 1

    def _head(self, size: int, timestamp: int, namespace: str) -> bytes:
        return B.tree_head(size, self.tree.root(size), timestamp, namespace,
                           *self.newest(namespace, size))

    def tree_head(self, timestamp: int, namespace: str = "") -> tuple[bytes, bytes]:
        """A signed v2 head for the whole log, naming ``namespace``'s newest bundle."""
        with self._lock:
            sth = self._head(self.size, timestamp, namespace)
        return sth, self.sk.sign(sth)

    def page(self, start: int, limit: int, timestamp: int, namespace: str = ""
             ) -> tuple[list[bytes], bytes, bytes]:
        """Statements ``start..start+limit`` and a signed tree head for the size
        they end at (so a reader can check them against it), naming
        ``namespace``'s newest bundle as of that size."""
        with self._lock:
            end = min(self.size, start + limit) if start < self.size else self.size
            sth = self._head(end, timestamp, namespace)
            return self.statements[start:end], sth, self.sk.sign(sth)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return self.tree.inclusion_proof(index, size)

    def consistency(self, first: int, size: int) -> list[bytes]:
        with self._lock:
            return self.tree.consistency_proof(first, size) if first else []

    def close(self) -> None:
        os.close(self._fd)
