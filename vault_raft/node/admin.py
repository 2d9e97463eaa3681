"""The operator's authenticated admin path: signed requests to a node's API.

pysyncobj's own admin (status/add/remove/transfer utility commands) and
readonly connections do not exist on the mTLS Raft wire.  What vault-raft
needs of them -- detailed status and leadership transfer -- goes through
``POST /v1/admin`` instead, with a request signed by the fleet's admin key
(Ed25519, made at ``fleet init``: ``FLEET/admin.key`` 0600; nodes hold the
public key).  The signature covers the fleet id, the target node, the
operation, its arguments, a timestamp and a random nonce; a node accepts a
request only within :data:`SKEW_MS` of its clock and only once (nonces are
remembered for twice that window), so a captured request cannot be replayed
to it or sent to another node.  Nonces live in memory; so that a restart
does not open the window again, a membership change (``member``) signed
before the node started is refused (sign a new one).
"""

from __future__ import annotations

import os
import threading
import time

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from vault_raft.errors import VaultRaftError

ADMIN_V = "vault-raft admin v1"
SKEW_MS = 30_000
OPS = ("status", "transfer", "compact", "member")  # member: node.membership


class AdminAuthError(VaultRaftError):
    """The admin request is not authentic, fresh and unused (message says which)."""


def _signed_part(fleet_id: str, node_id: str, op: str, args: dict, ts: int, nonce: bytes) -> bytes:
    return msgpack.packb([ADMIN_V, fleet_id, node_id, op, sorted(args.items()), ts, nonce],
                         use_bin_type=True)


def sign_request(sk: Ed25519PrivateKey, fleet_id: str, node_id: str, op: str,
                 args: dict | None = None, now_ms: int | None = None) -> dict:
    args = dict(args or {})
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    nonce = os.urandom(16)
    sig = sk.sign(_signed_part(fleet_id, node_id, op, args, ts, nonce))
    return {"op": op, "args": args, "ts": ts, "nonce": nonce, "sig": sig}


class AdminVerifier:
    def __init__(self, public_key: bytes | None, fleet_id: str, node_id: str):
        self.pk = Ed25519PublicKey.from_public_bytes(public_key) if public_key else None
        self.fleet_id, self.node_id = fleet_id, node_id
        self._seen: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self.started_ms = int(time.time() * 1000)  # nonces seen before are forgotten

    def verify(self, body: dict, now_ms: int) -> tuple[str, dict]:
        if self.pk is None:
            raise AdminAuthError("this node has no admin key configured")
        op, args, ts, nonce, sig = (body.get(k) for k in ("op", "args", "ts", "nonce", "sig"))
        if op not in OPS or not isinstance(args, dict) or not isinstance(ts, int) \
                or isinstance(ts, bool) \
                or not isinstance(nonce, bytes) or len(nonce) != 16 or not isinstance(sig, bytes):
            raise AdminAuthError("malformed admin request")
        try:
            self.pk.verify(sig, _signed_part(self.fleet_id, self.node_id, op, args, ts, nonce))
        except (InvalidSignature, TypeError, ValueError):
            raise AdminAuthError("admin signature does not verify (wrong key, node or fleet)") \
                from None
        if abs(now_ms - ts) > SKEW_MS:
            raise AdminAuthError("admin request is stale or from the future")
        if op == "member" and ts < self.started_ms:
            raise AdminAuthError("membership request signed before this node started (a "
                                 "replay across a restart?): sign a new one")
        with self._lock:
            for n, t in list(self._seen.items()):
                if now_ms - t > 2 * SKEW_MS:
                    del self._seen[n]
            if nonce in self._seen:
                raise AdminAuthError("admin request replayed")
            self._seen[nonce] = now_ms
        return op, args
