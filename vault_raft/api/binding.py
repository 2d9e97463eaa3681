"""The client <-> node protocol: endpoints, bodies, bindings (both sides use this).

Bodies are msgpack maps (``Content-Type: application/msgpack``); binary
fields are msgpack bin.  ``docs/api.md`` and ``GET /openapi.json`` describe
the same thing for humans and tools.

Recovery is two round trips; the counted guess is the commit in the first::

    POST /v1/recover/start   {user, ke1}          -> {ke2, token, attempts_left}
    POST /v1/recover/finish  {user, token, ke3}   -> {secret_box, failed_attempts}

``token`` is the server's KE2->KE3 state sealed under the fleet token key,
bound to the user, the attempt id and the record version: any node can
finish an attempt.  ``secret_box`` is the secret encrypted (AES-256-GCM)
under a key derived from the OPAQUE session key, so only the client that
completed the login can read it.  Changes need proof of the code: a MAC
under another session-derived key, over the request, with the same token.
"""

from __future__ import annotations

import msgpack

from vault_raft import limits
from vault_raft.core.results import Code
from vault_raft.crypto import seal as S

CONTENT_TYPE = "application/msgpack"
#: Every node reply carries the node's wall clock (Unix ms) in this header;
#: clients send ``deadline_ms`` in that clock.
TIME_HEADER = "Vault-Time"
MAX_BODY = 64 * 1024
MAX_SECRET = limits.SECRET_MAX
USER_MAX = limits.USER_ID_MAX
TICKET_MAX = 1024  # an enroll/start ticket (sealed; about 130 bytes)
TICKET_PURPOSES = ("enroll", "change_code")  # what an enroll/start ticket may be used for

# HTTP status -> error code used in bodies {"error": code, "message": text}
ERRORS = {
    400: "bad_request",
    401: "auth_failed",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: Code.EXISTS,  # the machine's refusals the node answers with a status of their own
    410: Code.DESTROYED,
    413: "too_large",
    415: "unsupported_media_type",
    417: "expectation_failed",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}
# error codes that are not their status's: a write read after its deadline_ms
# (503, nothing proposed; ``late_ms`` says by how much, in the node's clock)
EXPIRED = "expired"


def error_code(status: int) -> str:
    """The ``error`` of a reply with this status."""
    if status in ERRORS:
        return ERRORS[status]
    return "bad_request" if 400 <= status < 500 else "internal"


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_BODY,
                           max_str_len=MAX_BODY, max_array_len=1024, max_map_len=64)


def upload_info(fleet_id: str, user: bytes, purpose: bytes, binding: bytes) -> bytes:
    """HPKE info for a secret upload: binds it to fleet, user, purpose and the
    one request it belongs to (``binding``: the enroll/start nonce for an
    enrollment, the recovery token for a change of secret)."""
    return S.length_prefixed(b"vault-raft upload v2", fleet_id.encode(), user, purpose, binding)


def release_ad(user: bytes, token: bytes) -> bytes:
    return S.length_prefixed(b"vault-raft release v1", user, token)


def manage_message(op: str, user: bytes, token: bytes, payload: bytes, ticket: bytes) -> bytes:
    """What a manage request's proof MACs (``ticket`` is empty except for
    change_code, which carries the enroll/start ticket of the new code)."""
    return S.length_prefixed(b"vault-raft manage v2", op.encode(), user, token, payload, ticket)


RELEASE_KEY = b"release"
MANAGE_KEY = b"manage"
MANAGE_OPS = ("change_secret", "change_code", "delete")


# ---------------------------------------------------- client-side builders
# One place for the client's half of each message, used by the client
# library, the chaos actors and the bench load generator alike.

def seal_upload(enroll_public_key: bytes, fleet_id: str, user: bytes, purpose: bytes,
                binding: bytes, secret: bytes) -> bytes:
    """A secret encrypted to the fleet's enrollment key (HPKE base mode)."""
    return S.hpke_seal(enroll_public_key, secret, upload_info(fleet_id, user, purpose, binding))


def manage_proof(session_key: bytes, op: str, user: bytes, token: bytes, payload: bytes,
                 ticket: bytes = b"") -> bytes:
    return S.mac(S.session_subkey(session_key, MANAGE_KEY),
                 manage_message(op, user, token, payload, ticket))


def open_release(session_key: bytes, user: bytes, token: bytes, secret_box: bytes) -> bytes:
    """The released secret; raises SealError if the box is not for this login."""
    return S.unseal(S.session_subkey(session_key, RELEASE_KEY), secret_box,
                    release_ad(user, token))
