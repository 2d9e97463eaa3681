"""Who may act for a user: tenant-issued tokens, and limits on abuse.

A *tenant* is an app whose users the vault serves.  The fleet's operator
registers each tenant's Ed25519 verification keys in a **tenant list**
(``tenants.bin``) signed with the fleet admin key that every node already
trusts (``node.json`` ``admin_key``); ``vault-raft tenant init`` makes a tenant
(and ``fleet init`` makes ``local``, whose key the operator's own CLI uses).
Nodes reload the list when the file changes, so keys rotate the same way.

Every user-facing request (enroll, recover start and finish, manage) carries
``auth``: a JWT the tenant signed (EdDSA only) with

* ``iss`` the tenant id, ``sub`` the user id, ``aud`` the fleet id (or a
  namespace the list names), ``exp`` and ``iat`` (a lifetime of at most
  ``MAX_LIFETIME_S``), ``jti`` a unique id;

and is verified before anything is proposed: a missing, malformed, oversized,
expired, future-dated, wrongly signed (any algorithm but EdDSA, ``none``
included), wrong-audience or wrong-subject token costs no commit and gets 401.
Signatures are checked by PyJWT; the claims are parsed here, strictly (exact
types, no duplicated member).

Records are keyed by (tenant, user): a tenant's user ``u`` lives at
``tenant || 0x00 || u``, except for the one tenant flagged ``bare_ids`` (the
fleet's ``local`` tenant), whose users keep their plain ids, so that one fleet
can serve several tenants without their ids colliding.

Rate limits (token buckets per tenant and per user, in each node's memory)
are applied before proposing and answered with 429 and ``Retry-After``.  They
protect the fleet's commit capacity from floods; the guess limit does not
depend on them (the replicated log enforces it).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from vault_raft import limits
from vault_raft.errors import EXIT_UNAUTHORIZED, VaultRaftError

log = logging.getLogger("vault_raft.fleet.tenants")

TENANTS_FILE = "tenants.bin"
TENANT_KEYS_DIR = "tenants"  # in the fleet directory: the operator's copies of tenant keys
LIST_TAG = "vault-raft tenants v1"
TENANT_ID = re.compile(rf"^[a-z0-9][a-z0-9-]{{0,{limits.TENANT_ID_MAX - 1}}}$")
MAX_TOKEN = 2048  # bytes of a compact JWT
MAX_LIFETIME_S = 900  # exp - iat
CLOCK_SKEW_S = 60  # iat may be this far ahead of the node's clock
MAX_KEYS = 4  # per tenant (rotation: old and new side by side)
MAX_USERS_TRACKED = 100_000  # per-user buckets kept (least recently used dropped)
DEFAULT_LIMITS = {"tenant_rate": 2000.0, "tenant_burst": 4000.0,
                  "user_rate": 10.0, "user_burst": 30.0}


class TenantError(VaultRaftError):
    """The tenant list is missing, malformed, or not signed by the fleet admin key."""


class Unauthorized(VaultRaftError):
    """A token was refused; the message says why (one line, no secrets)."""

    exit_code = EXIT_UNAUTHORIZED


class RateLimited(VaultRaftError):
    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Tenant:
    id: str
    keys: tuple[bytes, ...]  # raw Ed25519 public keys
    bare_ids: bool = False
    tenant_rate: float = DEFAULT_LIMITS["tenant_rate"]  # 0: no limit
    tenant_burst: float = DEFAULT_LIMITS["tenant_burst"]
    user_rate: float = DEFAULT_LIMITS["user_rate"]
    user_burst: float = DEFAULT_LIMITS["user_burst"]

    def to_list(self) -> list:
        return [self.id, list(self.keys), self.bare_ids, self.tenant_rate, self.tenant_burst,
                self.user_rate, self.user_burst]

    @classmethod
    def from_list(cls, x) -> Tenant:
        tid, keys, bare, tr, tb, ur, ub = x
        if not isinstance(tid, str) or not TENANT_ID.match(tid):
            raise TenantError(f"bad tenant id {tid!r}")
        if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS or any(
                not isinstance(k, bytes) or len(k) != 32 for k in keys):
            raise TenantError(f"tenant {tid}: 1..{MAX_KEYS} keys of 32 bytes")
        rates = [float(v) for v in (tr, tb, ur, ub)]
        if any(v < 0 for v in rates) or type(bare) is not bool:
            raise TenantError(f"tenant {tid}: bad limits")
        return cls(tid, tuple(keys), bare, *rates)

    def record_key(self, user: bytes) -> bytes:
        """Where this tenant's ``user`` lives in the vault."""
        return user if self.bare_ids else self.id.encode() + b"\0" + user


@dataclass(frozen=True)
class TenantList:
    fleet_id: str
    tenants: tuple[Tenant, ...]
    audiences: tuple[str, ...]  # besides the fleet id: namespaces tokens may name
    created: int

    def body(self) -> bytes:
        return msgpack.packb([LIST_TAG, self.fleet_id, [t.to_list() for t in self.tenants],
                              list(self.audiences), self.created], use_bin_type=True)

    def signed(self, admin_sk: Ed25519PrivateKey) -> bytes:
        body = self.body()
        return msgpack.packb([body, admin_sk.sign(body)], use_bin_type=True)

    @classmethod
    def verify(cls, blob: bytes, admin_pk: bytes, fleet_id: str) -> TenantList:
        try:
            body, sig = msgpack.unpackb(blob, raw=False)
            Ed25519PublicKey.from_public_bytes(admin_pk).verify(sig, body)
            tag, fid, tenants, audiences, created = msgpack.unpackb(body, raw=False)
        except InvalidSignature:
            raise TenantError("tenant list not signed by this fleet's admin key") from None
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise TenantError(f"tenant list malformed: {exc}") from None
        if tag != LIST_TAG or fid != fleet_id:
            raise TenantError(f"tenant list is for fleet {fid!r}, not {fleet_id!r}")
        if not isinstance(tenants, list) or not isinstance(audiences, list) \
                or any(not isinstance(a, str) for a in audiences):
            raise TenantError("tenant list malformed")
        ts = tuple(Tenant.from_list(t) for t in tenants)
        if len({t.id for t in ts}) != len(ts) or sum(t.bare_ids for t in ts) > 1:
            raise TenantError("tenant ids must be unique, and at most one tenant bare_ids")
        return cls(fid, ts, tuple(audiences), int(created))

    def get(self, tenant_id: str) -> Tenant | None:
        return next((t for t in self.tenants if t.id == tenant_id), None)


# ----------------------------------------------------------------- tokens

def user_to_sub(user: bytes) -> str:
    """A user id as a token's ``sub``: its UTF-8 text (ids that are not UTF-8
    cannot be named in a token)."""
    return user.decode("utf-8")


def mint(tenant_id: str, sk: Ed25519PrivateKey, user: bytes, audience: str,
         lifetime: int = 300, now: float | None = None, jti: str | None = None) -> str:
    """A token for ``user`` (what a tenant's server gives its signed-in user).
    ``jti`` is drawn at random unless given (the conformance vectors fix it)."""
    if not 1 <= lifetime <= MAX_LIFETIME_S:
        raise ValueError(f"lifetime must be 1..{MAX_LIFETIME_S} s")
    t = int(time.time() if now is None else now)
    if jti is None:
        jti = base64.urlsafe_b64encode(os.urandom(12)).decode()
    claims = {"iss": tenant_id, "sub": user_to_sub(user), "aud": audience, "iat": t,
              "exp": t + lifetime, "jti": jti}
    return jwt.encode(claims, sk, algorithm="EdDSA")


# ------------------------------------------------------- operator's side

def tenant_key_path(fleet_dir: str, tenant_id: str) -> str:
    return os.path.join(fleet_dir, TENANT_KEYS_DIR, f"{tenant_id}.key")


def local_token_source(fleet_dir: str, audience: str, tenant_id: str = "local",
                       lifetime: int = 120):
    """For the operator's own tools: a function user -> token minted with the
    fleet directory's copy of a tenant's key (a token is reused for a user
    until half its lifetime has passed), or None if it has none."""
    from vault_raft.fleet.keystore import load_signing_key
    path = tenant_key_path(fleet_dir, tenant_id)
    if not os.path.exists(path):
        return None
    sk = load_signing_key(path, f"tenant key {tenant_id}")
    cache: OrderedDict = OrderedDict()

    def source(user: bytes) -> str:
        now = time.time()
        hit = cache.get(user)
        if hit is None or now - hit[0] > lifetime / 2:
            hit = cache[user] = (now, mint(tenant_id, sk, user, audience, lifetime, now))
            while len(cache) > 10_000:
                cache.popitem(last=False)
        return hit[1]
    return source


def _admin(fleet_dir: str):
    from vault_raft.fleet.config import ADMIN_KEY_FILE
    from vault_raft.fleet.keystore import load_signing_key
    return load_signing_key(os.path.join(fleet_dir, ADMIN_KEY_FILE), "admin key")


def load_list(fleet_dir: str) -> TenantList | None:
    """The fleet directory's tenant list (checked), or None if it has none."""
    from vault_raft.fleet.config import FleetInfo
    path = os.path.join(fleet_dir, TENANTS_FILE)
    if not os.path.exists(path):
        return None
    fleet = FleetInfo.load(os.path.join(fleet_dir, "fleet.json"))
    pk = _admin(fleet_dir).public_key().public_bytes_raw()
    with open(path, "rb") as f:
        return TenantList.verify(f.read(), pk, fleet.fleet_id)


def publish_list(fleet_dir: str, tl: TenantList) -> list[str]:
    """Sign ``tl`` with the admin key and write it to the fleet directory and
    to every node directory in it (nodes reload it); returns the paths."""
    from vault_raft.fleet.config import FleetInfo
    from vault_raft.storage.files import atomic_write
    blob = tl.signed(_admin(fleet_dir))
    fleet = FleetInfo.load(os.path.join(fleet_dir, "fleet.json"))
    paths = [os.path.join(fleet_dir, TENANTS_FILE)]
    paths += [os.path.join(fleet_dir, n.id, TENANTS_FILE) for n in fleet.nodes
              if os.path.isdir(os.path.join(fleet_dir, n.id))]
    for p in paths:
        atomic_write(p, blob)
    return paths


def add_tenant(fleet_dir: str, tenant_id: str, *, bare_ids: bool = False,
               audiences: tuple[str, ...] = (), limits: dict | None = None,
               public_key: bytes | None = None) -> str:
    """Register a new tenant: its signing key (kept in the fleet directory,
    0600: the tenant's server holds it in a real deployment) and the signed
    list with its verification key.  Returns the key's path.  With
    ``public_key``, the tenant's existing key is registered instead (the same
    tenant on another fleet of its namespace) and no key file is made."""
    from vault_raft.fleet.config import FleetInfo
    from vault_raft.fleet.keystore import new_signing_key_file
    if not TENANT_ID.match(tenant_id):
        raise TenantError("tenant names are 1..32 of a-z, 0-9 and '-', starting with a "
                          "letter or digit")
    fleet = FleetInfo.load(os.path.join(fleet_dir, "fleet.json"))
    tl = load_list(fleet_dir) or TenantList(fleet.fleet_id, (), (), int(time.time()))
    if tl.get(tenant_id) is not None:
        raise TenantError(f"tenant {tenant_id!r} exists already")
    if bare_ids and any(t.bare_ids for t in tl.tenants):
        raise TenantError("another tenant already owns the plain user ids")
    key_path = tenant_key_path(fleet_dir, tenant_id)
    if public_key is not None:
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise TenantError("a tenant public key is 32 bytes (Ed25519)")
        pk, key_path = public_key, ""
    else:
        os.makedirs(os.path.join(fleet_dir, TENANT_KEYS_DIR), mode=0o700, exist_ok=True)
        pk = new_signing_key_file(key_path)
    lim = dict(DEFAULT_LIMITS, **(limits or {}))
    t = Tenant(tenant_id, (pk,), bare_ids, lim["tenant_rate"], lim["tenant_burst"],
               lim["user_rate"], lim["user_burst"])
    tl = TenantList(tl.fleet_id, tl.tenants + (t,),
                    tuple(dict.fromkeys(tl.audiences + tuple(audiences))), int(time.time()))
    publish_list(fleet_dir, tl)
    return key_path
