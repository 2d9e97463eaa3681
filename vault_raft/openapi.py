"""OpenAPI 3.1 description of a node's client API (served at GET /openapi.json).

``docs/protocol.md`` is the normative specification; this document describes
the same endpoints for tools.  Bodies are msgpack maps: ``format: binary`` is
msgpack bin, and its ``minLength``/``maxLength`` are bytes.  Every operation
lists every status it answers.  ``tests/test_openapi_replies.py`` checks real
replies of every endpoint, success and each error, against the document a
node serves.
"""

from . import protocol as P
from .core import machine as M
from .crypto import opaque
from .tenant import MAX_TOKEN

_U63 = (1 << 63) - 1
_SEALED_OVERHEAD = 1 + 12 + 16  # version, nonce, tag (crypto/seal.py)


def _bin(lo: int, hi: int | None = None, desc: str | None = None) -> dict:
    s = {"type": "string", "format": "binary", "minLength": lo,
         "maxLength": lo if hi is None else hi}
    if desc:
        s["description"] = desc
    return s


def _int(lo: int = 0, hi: int = _U63, desc: str | None = None) -> dict:
    s = {"type": "integer", "minimum": lo, "maximum": hi}
    if desc:
        s["description"] = desc
    return s


def _obj(props: dict, required: list[str] | None = None) -> dict:
    s = {"type": "object", "properties": props}
    if required:
        s["required"] = required
    return s


def _body(props: dict, required: list[str]) -> dict:
    return {"required": True, "content": {P.CONTENT_TYPE: {"schema": _obj(props, required)}}}


def _resp(desc: str, schema: dict | None = None) -> dict:
    r: dict = {"description": desc}
    if schema is not None:
        r["content"] = {P.CONTENT_TYPE: {"schema": schema}}
    return r


_BIN = {"type": "string", "format": "binary"}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR = _obj({
    "error": {"type": "string", "enum": sorted(set(P.ERRORS.values()) | {
        "internal", "method_not_allowed", "request_timeout", "expectation_failed", "expired"})},
    "message": {"type": "string", "description": "for people and logs; never parsed"},
    "reason": {"type": "string", "enum": ["token", "replayed", "stale"],
               "description": "401 token: the tenant token was refused; 409 replayed/stale: "
                              "the enrollment ticket"},
    "proposed": {"type": "boolean", "description": "503: false means nothing was proposed, so "
                                                   "the request is safe to send to another node"},
    "retry_after": _int(1, _U63, "429: seconds to wait (also the Retry-After header)"),
    "late_ms": _int(1, _U63, "503 expired: how late the request was read, in the node's clock"),
}, ["error", "message"])

USER = _bin(1, P.USER_MAX, f"user id, 1..{P.USER_MAX} bytes (a msgpack str is taken as its UTF-8 "
                           "bytes)")
AUTH = {"type": "string", "maxLength": MAX_TOKEN,
        "description": "the tenant's token for this user: a compact JWS (EdDSA) JWT "
                       "(docs/protocol.md section 7)"}
TOKEN = _bin(1, 1024, "the recovery token recover/start issued (opaque)")
TICKET = _bin(1, P.TICKET_MAX, "the single-use ticket enroll/start issued (opaque)")
DEADLINE = _int(0, _U63, "when the client stops waiting, Unix ms in the node's clock: a node "
                         "reading the request later refuses it, proposing nothing")
MAX_ATTEMPTS = _int(1, M.MAX_ATTEMPTS_LIMIT)

_ERRS = {
    400: "malformed request (HTTP, msgpack, or a field's type, length or value); nothing "
         "changed",
    401: "not authorised (reason: token: the tenant token was refused, nothing proposed)",
    404: "no such resource",
    405: "method not allowed on this path",
    409: "conflict",
    410: "the record was destroyed by the guess limit",
    413: f"body over {P.MAX_BODY} bytes",
    415: f"body is not {P.CONTENT_TYPE}",
    429: "the tenant's or the user's rate limit; nothing proposed (Retry-After)",
    500: "a node bug (details only in its log)",
    503: "unavailable: no majority in time, no usable tenant list, or the node is down "
         "(proposed: false: nothing was proposed)",
}


def _errors(*statuses: int, **described: str) -> dict:
    return {str(st): _resp(described.get(f"s{st}", _ERRS[st]), _ERROR_REF) for st in statuses}


_USER_POST = (400, 401, 405, 413, 415, 429, 503)  # every user request


def _user_post(summary: str, props: dict, required: list[str], ok: dict, *extra: int,
               **described: str) -> dict:
    props = {"user": USER, "auth": AUTH, **props}
    return {"post": {"summary": summary, "requestBody": _body(props, ["user", "auth"] + required),
                     "responses": {**ok, **_errors(*sorted(set(_USER_POST + extra)),
                                                   **described)}}}


def _get(summary: str, ok: dict, *extra: int, params: list | None = None, **described) -> dict:
    op = {"summary": summary, "responses": {**ok, **_errors(*sorted({405, *extra}),
                                                             **described)}}
    if params:
        op["parameters"] = params
    return {"get": op}


_STATUS = _obj({
    "node_id": {"type": "string"}, "fleet_id": {"type": "string"},
    "role": {"type": "string", "enum": ["leader", "follower", "candidate", "down"]},
    "term": {"type": ["integer", "null"]}, "commit_index": {"type": ["integer", "null"]},
    "last_applied": {"type": ["integer", "null"]}, "leader": {"type": ["string", "null"]},
    "healthy": {"type": "boolean"},
    "reason": {"type": "string", "description": "why a node that is down is down"},
}, ["node_id", "fleet_id", "role", "healthy"])

_HASHES = {"type": "array", "maxItems": 64, "items": _bin(32)}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "vault-raft node API", "version": "1",
             "description": "vault-raft protocol v1 (docs/protocol.md, normative). Bodies are "
                            "msgpack maps; format: binary is msgpack bin, its lengths in bytes. "
                            "A recovery guess is counted by a majority commit before KE2 is "
                            "computed. Every error is the map {error, message, ...}."},
    "paths": {
        "/v1/enroll/start": _user_post(
            "OPAQUE registration: evaluate the OPRF under a fresh credential identifier and "
            "issue a single-use ticket (stores nothing)",
            {"request": _bin(opaque.REG_REQUEST_LEN, desc="RegistrationRequest"),
             "purpose": {"type": "string", "enum": list(P.TICKET_PURPOSES)},
             "deadline_ms": DEADLINE},
            ["request"],
            {"200": _resp("registration response and ticket", _obj({
                "response": _bin(opaque.REG_RESPONSE_LEN, desc="RegistrationResponse"),
                "ticket": TICKET, "nonce": _bin(M.NONCE_LEN, desc="the upload's binding"),
                "expires_ms": _int(desc="the ticket's expiry, Unix ms in the node's clock")},
                ["response", "ticket", "nonce", "expires_ms"]))}),
        "/v1/enroll/finish": _user_post(
            "Store the OPAQUE record and the HPKE-encrypted secret (majority commit)",
            {"record": _bin(opaque.RECORD_LEN, desc="RegistrationRecord"), "ticket": TICKET,
             "upload": _bin(1, P.MAX_BODY, "HPKE upload of the secret (enc || ct)"),
             "max_attempts": MAX_ATTEMPTS, "deadline_ms": DEADLINE},
            ["record", "ticket", "upload"],
            {"201": _resp("enrolled", _obj({"enrolled": {"type": "boolean"},
                                            "max_attempts": MAX_ATTEMPTS},
                                           ["enrolled", "max_attempts"]))},
            409,
            s401="the tenant token (reason: token), or the ticket invalid, expired or for "
                 "another user or purpose",
            s409="an active record exists, or the ticket was used (reason: replayed) or issued "
                 "before the record last changed (reason: stale)"),
        "/v1/recover/start": _user_post(
            "Count an attempt (majority commit), then answer KE1 with KE2",
            {"ke1": _bin(opaque.KE1_LEN, desc="KE1"), "deadline_ms": DEADLINE},
            ["ke1"],
            {"200": _resp("KE2 (a fake one for a user without a record)", _obj({
                "ke2": _bin(opaque.KE2_LEN, desc="KE2"), "token": TOKEN,
                "attempts_left": _int(0, M.MAX_ATTEMPTS_LIMIT,
                                      "attempts left after this one")},
                ["ke2", "token", "attempts_left"]))},
            410),
        "/v1/recover/finish": _user_post(
            "Verify KE3, release the secret (majority commit), encrypted to the session",
            {"token": TOKEN, "ke3": _bin(opaque.KE3_LEN, desc="KE3"), "deadline_ms": DEADLINE},
            ["token", "ke3"],
            {"200": _resp("released", _obj({
                "secret_box": _bin(_SEALED_OVERHEAD + 1, _SEALED_OVERHEAD + P.MAX_SECRET),
                "failed_attempts": _int(0, M.MAX_ATTEMPTS_LIMIT),
                "max_attempts": MAX_ATTEMPTS}, ["secret_box", "failed_attempts",
                                                "max_attempts"]))},
            410, 500,
            s401="the tenant token (reason: token), or KE3 did not verify, or the token is "
                 "invalid, expired, used or for another user"),
        "/v1/manage": _user_post(
            "change_secret, change_code or delete, with proof of a fresh recovery",
            {"op": {"type": "string", "enum": list(P.MANAGE_OPS)}, "token": TOKEN,
             "payload": _bin(0, P.MAX_BODY, "change_secret: an HPKE upload; change_code: the "
                                            "new RegistrationRecord; delete: empty"),
             "proof": _bin(32, desc="HMAC-SHA256 under the session's manage key"),
             "ticket": _bin(1, P.TICKET_MAX, "change_code only: the enroll/start ticket of the "
                                             "new code"),
             "deadline_ms": DEADLINE},
            ["op", "token", "proof"],
            {"200": _resp("done", _obj({"done": {"type": "string",
                                                 "enum": ["changed", "deleted"]}}, ["done"]))},
            409, 410,
            s401="the tenant token (reason: token), or no valid proof, or a bad ticket, or no "
                 "fresh successful recovery authorises a change",
            s409="the change_code ticket was used before (reason: replayed) or is stale "
                 "(reason: stale)"),
        "/v1/status": _get("Role, term, commit index, leader, health (healthy: false and a "
                           "reason while the node waits for its disk)",
                           {"200": _resp("status", _STATUS)}),
        "/v1/admin": {"post": {
            "summary": "Operator operations signed with the fleet admin key: status (with "
                       "details), transfer (leadership to args.to or the best follower), "
                       "compact (snapshot and compact the journal now)",
            "requestBody": _body({"op": {"type": "string", "enum": ["status", "transfer",
                                                                    "compact"]},
                                  "args": _obj({"to": {"type": "string",
                                                       "description": "transfer: a node id"}}),
                                  "ts": _int(0, _U63, "the signer's clock (Unix ms), within "
                                                      "30 s of the node's"),
                                  "nonce": _bin(16), "sig": _bin(64, desc="Ed25519 by the "
                                                                          "fleet admin key")},
                                 ["op", "args", "ts", "nonce", "sig"]),
            "responses": {"200": _resp("status details, {transferred, leader} or {compacting}",
                                       {"type": "object"}),
                          **_errors(400, 401, 405, 409, 413, 415, 503,
                                    s400="malformed, or transfer to a node that is not another "
                                         "of this fleet's",
                                    s401="forged, stale, replayed or for another node",
                                    s409="transfer refused (this node must lead; the target "
                                         "must be connected and caught up)")}}},
        "/v1/trust": _get(
            "The published fleet bundle with the witness's proofs (clients verify all of it)",
            {"200": _resp("signed bundle", _obj({
                "bundle": _BIN, "operator_sig": _bin(64), "statement": _BIN,
                "witness_sig": _bin(64), "leaf_index": _int(), "inclusion": _HASHES,
                "sth": _BIN, "sth_sig": _bin(64), "consistency": _HASHES},
                ["bundle", "operator_sig", "statement", "witness_sig", "leaf_index",
                 "inclusion", "sth", "sth_sig", "consistency"]))},
            400, 404,
            params=[{"name": "since", "in": "query", "schema": _int(),
                     "description": "the tree size the client verified last: the consistency "
                                    "proof is from it to the served tree head"}],
            s400="since is not 0 to 20 digits", s404="nothing published to this node yet"),
        "/v1/deployment": _get(
            "A fleet's operator-signed deployment record (node key statements)",
            {"200": _resp("record", _obj({"record": _BIN, "operator_sig": _bin(64)},
                                         ["record", "operator_sig"]))},
            404, params=[{"name": "fleet", "in": "query", "schema": {"type": "string"}}],
            s404="no record for that fleet here"),
        "/openapi.json": {"get": {"summary": "This document (JSON)",
                                  "responses": {"200": {"description": "OpenAPI 3.1"},
                                                **_errors(405)}}},
    },
    "components": {"schemas": {"Error": ERROR}},
}
