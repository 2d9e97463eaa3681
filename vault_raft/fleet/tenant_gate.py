"""A node's gate for user requests: the tenant token check and the rate limits.

The token and list formats are :mod:`vault_raft.fleet.tenants`; this module
is what a node runs on every user-facing request before it proposes anything
(see that module's docstring for the claims and the limits).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections import OrderedDict

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vault_raft.fleet.tenants import (
    CLOCK_SKEW_S,
    MAX_LIFETIME_S,
    MAX_TOKEN,
    MAX_USERS_TRACKED,
    TENANTS_FILE,
    RateLimited,
    Tenant,
    TenantError,
    TenantList,
    Unauthorized,
    user_to_sub,
)

log = logging.getLogger("vault_raft.fleet.tenants")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise Unauthorized(f"token claim {k!r} appears twice")
        out[k] = v
    return out


def _claims(token: str) -> dict:
    """The payload, parsed strictly (before the signature is known good: used
    only to find the issuer, then again after verification)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthorized("token is not a compact JWT")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        if not raw.lstrip().startswith(b"{"):
            raise Unauthorized("token payload is not an object")
        claims = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Unauthorized("token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise Unauthorized("token payload is not an object")
    return claims


def _want(claims: dict, name: str, kind: type):
    v = claims.get(name)
    if type(v) is not kind:
        raise Unauthorized(f"token claim {name!r} missing or not a {kind.__name__}")
    return v


class Gate:
    """A node's check of tokens and rates, from the tenant list in its
    directory (reloaded when the file changes).  Thread-safe.

    It fails closed: a node that has the fleet admin key but no usable tenant
    list answers user requests 503 (:meth:`required`), unless its node.json
    says ``"tenants": "off"`` (a fleet made before tenants, on purpose).  A
    list that does not verify, or is older than one already seen, is refused
    and the last good one kept (logged once)."""

    def __init__(self, node_dir: str, fleet_id: str, admin_pk: bytes | None,
                 clock=time.time, required: bool = True):
        self.path = os.path.join(node_dir, TENANTS_FILE)
        self.seen_path = self.path + ".seen"  # the newest list's ``created`` ever loaded
        self.fleet_id, self.admin_pk, self.clock = fleet_id, admin_pk, clock
        self.required = required and admin_pk is not None
        self._stamp: tuple | None = None
        self.tenants: TenantList | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._tenant_buckets: dict = {}  # tenant id -> [tokens, last time]
        self._user_buckets: OrderedDict = OrderedDict()  # (tenant, user) -> [tokens, last]
        self._reload()

    @property
    def enforced(self) -> bool:
        """Are tokens checked?  (Always, unless the node opted out, or has no
        admin key to check a list with.)"""
        return self.required or self.tenants is not None

    def _seen(self) -> int:
        try:
            with open(self.seen_path) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.tenants is None:
                self.error = f"no tenant list ({self.path}): run 'vault-raft tenant init'"
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            if self.admin_pk is None:
                raise TenantError(f"{self.path}: this node has no admin key to check it with")
            with open(self.path, "rb") as f:
                tl = TenantList.verify(f.read(), self.admin_pk, self.fleet_id)
            newest = max(self._seen(), self.tenants.created if self.tenants else 0)
            if tl.created < newest:
                raise TenantError(f"{self.path} is older ({tl.created}) than a list already "
                                  f"in force ({newest}): refused")
        except (TenantError, OSError) as exc:
            if str(exc) != self.error:
                log.error("tenant list not loaded: %s%s", exc, "; keeping the one in force"
                          if self.tenants else "")
            self.error = str(exc)
            return
        if tl.created > self._seen():
            from vault_raft.storage.files import atomic_write
            try:
                atomic_write(self.seen_path, str(tl.created).encode())
            except OSError as exc:
                log.warning("cannot record the tenant list's date: %s", exc)
        self.tenants, self.error = tl, None

    def check_ready(self) -> None:
        """Reload if changed; TenantError if tokens must be checked and no list
        is usable (the node then answers 503, proposing nothing)."""
        self._reload()
        if self.required and self.tenants is None:
            raise TenantError(self.error or "no tenant list")

    def authorize(self, token, user: bytes) -> Tenant:
        """The tenant a valid token for ``user`` was issued by; Unauthorized
        otherwise.  Nothing here touches the replicated state."""
        self.check_ready()
        tl = self.tenants
        if tl is None:
            raise TenantError(self.error or "no tenant list")
        if not isinstance(token, str) or not token:
            raise Unauthorized("a tenant token (auth) is required")
        if len(token) > MAX_TOKEN:
            raise Unauthorized(f"token longer than {MAX_TOKEN} bytes")
        unverified = _claims(token)
        iss = unverified.get("iss")
        tenant = tl.get(iss) if isinstance(iss, str) else None
        if tenant is None:
            raise Unauthorized("token issuer is not a tenant of this fleet")
        for pk in tenant.keys:
            try:
                jwt.api_jws.decode_complete(token, Ed25519PublicKey.from_public_bytes(pk),
                                            algorithms=["EdDSA"])
                break
            except jwt.InvalidTokenError:
                continue
        else:
            raise Unauthorized("token signature is not the tenant's (EdDSA only)")
        claims = _claims(token)  # the same bytes: now known to be the tenant's
        now = self.clock()
        iat, exp = _want(claims, "iat", int), _want(claims, "exp", int)
        _want(claims, "jti", str)
        if _want(claims, "iss", str) != tenant.id:
            raise Unauthorized("token issuer changed")
        if exp <= now:
            raise Unauthorized("token expired")
        if iat > now + CLOCK_SKEW_S:
            raise Unauthorized("token issued in the future")
        if not 0 < exp - iat <= MAX_LIFETIME_S:
            raise Unauthorized(f"token lifetime must be 1..{MAX_LIFETIME_S} s")
        if _want(claims, "aud", str) not in (self.fleet_id, *tl.audiences):
            raise Unauthorized("token is for another fleet")
        try:
            if _want(claims, "sub", str) != user_to_sub(user):
                raise Unauthorized("token is for another user")
        except UnicodeDecodeError:
            raise Unauthorized("this user id cannot be named in a token (not UTF-8)") from None
        if b"\0" in user:  # record keys are tenant \0 user: no id may contain one
            raise Unauthorized("user ids may not contain NUL")
        return tenant

    def admit(self, tenant: Tenant, user: bytes) -> None:
        """Take one request from the tenant's and the user's buckets; RateLimited
        (with the seconds to wait) if either is empty."""
        now = time.monotonic()
        with self._lock:
            take = []
            for who, table, key, rate, burst in (
                    ("tenant", self._tenant_buckets, tenant.id, tenant.tenant_rate,
                     tenant.tenant_burst),
                    ("user", self._user_buckets, (tenant.id, user), tenant.user_rate,
                     tenant.user_burst)):
                if rate <= 0:
                    continue
                b = table.get(key)
                if b is None:
                    b = table[key] = [burst, now]
                if table is self._user_buckets:  # bounded: least recently used dropped
                    table.move_to_end(key)
                    while len(table) > MAX_USERS_TRACKED:
                        table.popitem(last=False)
                b[0] = min(burst, b[0] + (now - b[1]) * rate)
                b[1] = now
                if b[0] < 1:
                    raise RateLimited(f"{who} rate limit ({rate:g}/s) reached",
                                      (1 - b[0]) / rate)
                take.append(b)
            for b in take:
                b[0] -= 1
