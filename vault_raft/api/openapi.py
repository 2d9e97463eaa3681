"""OpenAPI 3.1 description of a node's client API (served at GET /openapi.json).

Every binary field says its length (``minLength``/``maxLength`` in bytes: the
bodies are msgpack, whose ``bin`` is what ``format: binary`` stands for here),
and every operation lists every status it can answer.  ``tests/test_fuzz_api.py``
generates requests from these schemas and checks every real reply against
them.
"""

from typing import Any

from vault_raft.api import binding as P
from vault_raft.core import machine as M
from vault_raft.crypto import opaque

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


_TIME = {"description": "the node's wall clock when it replied (Unix ms): clients send "
                        "deadline_ms in this clock",
         "schema": {"type": "string", "pattern": "^[0-9]+$"}}


_TIME_REF = {"$ref": "#/components/headers/VaultTime"}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _resp(desc: str, schema: dict | None = None) -> dict:
    r: dict = {"description": desc, "headers": {P.TIME_HEADER: _TIME_REF}}
    if schema is not None:
        r["content"] = {P.CONTENT_TYPE: {"schema": schema}}
    return r


USER = _bin(1, P.USER_MAX, f"user id, 1..{P.USER_MAX} bytes (a msgpack str is taken as its "
                           "UTF-8 bytes)")
TOKEN = _bin(1, 1024, "the sealed recovery state recover/start issued")
TICKET = _bin(1, P.TICKET_MAX, "the sealed single-use ticket enroll/start issued")
DEADLINE = _int(0, _U63, f"when the client stops waiting, in the node's clock (Unix ms, "
                         f"from the {P.TIME_HEADER} header of its replies): a node reading "
                         "the request later refuses it (503 expired, nothing proposed)")
MAX_ATTEMPTS = _int(1, M.MAX_ATTEMPTS_LIMIT)

ERROR = _obj({
    "error": {"type": "string", "enum": sorted(set(P.ERRORS.values()) | {P.EXPIRED})},
    "message": {"type": "string"},
    "proposed": {"type": "boolean", "description": "false: nothing was proposed, the request "
                                                   "is safe to send to another node"},
    "late_ms": _int(1, _U63, "expired: by how much, in the node's clock"),
    "reason": {"type": "string", "enum": ["replayed", "stale", "token"]},
    "retry_after": _int(1, _U63, "429: seconds until the next request may pass"),
}, ["error", "message"])

_ERRS = {
    400: "malformed request (HTTP, encoding, msgpack or a field); nothing changed",
    401: "authentication failed",
    404: "no such resource",
    405: "method not allowed here (the Allow header lists the allowed ones)",
    408: "the body did not arrive within the body timeout (docs/api.md); the connection is "
         "closed",
    409: "conflict",
    410: "the record was destroyed",
    413: f"body over {P.MAX_BODY} bytes (after decoding a Content-Encoding)",
    415: f"body is not {P.CONTENT_TYPE}",
    417: "an Expect other than 100-continue",
    429: "rate limited (per tenant or per user): Retry-After says when to come back",
    503: "unavailable: no majority reachable in time, or the node is waiting for its disk "
         "(proposed: false: nothing proposed); error 'expired': read after its deadline_ms",
}


def _errors(*statuses: int, **described: str) -> dict:
    out = {}
    for st in statuses:
        out[str(st)] = _resp(described.get(f"s{st}", _ERRS[st]), _ERROR_REF)
    return out


_ANY = (400, 405, 417, 503)  # any request: malformed, a wrong method or Expect, a node down
_POST = (*_ANY, 408, 413, 415)
AUTH = {"type": "string", "description": "the tenant's token for this user (an EdDSA JWT, "
                                         "docs/api.md): checked before anything is proposed"}
_USER_REQUEST = (401, 429)  # a missing, bad or foreign token; a rate limit


def _post(summary: str, body: dict, ok: dict, *extra: int, **described: str) -> dict:
    return {"post": {"summary": summary, "requestBody": body,
                     "responses": {**ok, **_errors(*sorted(set(_POST + extra)), **described)}}}


def _get(summary: str, ok: dict, *extra: int, params: list | None = None, **described) -> dict:
    op = {"summary": summary, "responses": {**ok, **_errors(*sorted(set(_ANY + extra)),
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

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "vault-raft node API", "version": "1",
             "description": "Bodies are msgpack maps; format: binary is msgpack bin, and its "
                            "lengths are in bytes. A recovery guess is counted by a majority "
                            "commit before KE2 is computed. Every reply carries the node's "
                            f"clock in {P.TIME_HEADER}; every error is {{error, message}}. "
                            "See docs/api.md."},
    "paths": {
        "/v1/enroll/start": _post(
            "OPAQUE registration: evaluate the OPRF under a fresh credential identifier and "
            "issue a single-use ticket (stores nothing)",
            _body({"user": USER, "auth": AUTH, "request": _bin(opaque.REG_REQUEST_LEN),
                   "purpose": {"type": "string", "enum": list(P.TICKET_PURPOSES)}},
                  ["user", "request"]),
            {"200": _resp("registration response and ticket", _obj({
                "response": _bin(opaque.REG_RESPONSE_LEN), "ticket": TICKET,
                "nonce": _bin(M.NONCE_LEN), "expires_ms": _int()},
                ["response", "ticket", "nonce", "expires_ms"]))}, *_USER_REQUEST,
            s401="a missing, bad or foreign tenant token (reason: token)"),
        "/v1/enroll/finish": _post(
            "Store the OPAQUE record and the HPKE-encrypted secret (majority commit)",
            _body({"user": USER, "auth": AUTH, "record": _bin(opaque.RECORD_LEN),
                   "ticket": TICKET,
                   "upload": _bin(1, P.MAX_BODY, "HPKE ciphertext of the secret"),
                   "max_attempts": MAX_ATTEMPTS, "deadline_ms": DEADLINE},
                  ["user", "record", "ticket", "upload"]),
            {"201": _resp("enrolled", _obj({"enrolled": {"type": "boolean"},
                                           "max_attempts": MAX_ATTEMPTS},
                                          ["enrolled", "max_attempts"]))},
            *_USER_REQUEST, 409,
            s401="a bad tenant token (reason: token), or a ticket invalid, expired or for "
                 "another user",
            s409="an active record exists, or the ticket was used (reason: replayed) or "
                 "issued before the record last changed (reason: stale)"),
        "/v1/recover/start": _post(
            "Count an attempt (majority commit), then answer KE1 with KE2",
            _body({"user": USER, "auth": AUTH, "ke1": _bin(opaque.KE1_LEN),
                   "deadline_ms": DEADLINE},
                  ["user", "ke1"]),
            {"200": _resp("KE2 (fake for unknown users)", _obj({
                "ke2": _bin(opaque.KE2_LEN), "token": TOKEN,
                "attempts_left": _int(0, M.MAX_ATTEMPTS_LIMIT)},
                ["ke2", "token", "attempts_left"]))},
            *_USER_REQUEST, 410, s410="record destroyed",
            s401="a missing, bad or foreign tenant token (reason: token)"),
        "/v1/recover/finish": _post(
            "Verify KE3, release the secret (majority commit), encrypted to the session",
            _body({"user": USER, "auth": AUTH, "token": TOKEN, "ke3": _bin(opaque.KE3_LEN)},
                  ["user", "token", "ke3"]),
            {"200": _resp("released", _obj({
                "secret_box": _bin(_SEALED_OVERHEAD + 1, _SEALED_OVERHEAD + P.MAX_SECRET),
                "failed_attempts": _int(0, M.MAX_ATTEMPTS_LIMIT),
                "max_attempts": MAX_ATTEMPTS}, ["secret_box", "failed_attempts",
                                                "max_attempts"]))},
            *_USER_REQUEST, 410, s401="a bad tenant token (reason: token), or KE3 did not "
                                      "verify / attempt expired, used or for another user",
            s410="record destroyed"),
        "/v1/manage": _post(
            "change_secret, change_code or delete, with proof of a fresh recovery",
            _body({"user": USER, "auth": AUTH,
                   "op": {"type": "string", "enum": list(P.MANAGE_OPS)},
                   "token": TOKEN, "payload": _bin(0, P.MAX_BODY), "proof": _bin(32),
                   "ticket": _bin(0, P.TICKET_MAX, "change_code only: the enroll/start "
                                                   "ticket of the new code"),
                   "deadline_ms": DEADLINE},
                  ["user", "op", "token", "proof"]),
            {"200": _resp("done", _obj({"done": {"type": "string",
                                                 "enum": ["changed", "deleted"]}},
                                       ["done"]))},
            *_USER_REQUEST, 409, 410, s401="a bad tenant token (reason: token), no valid "
                                           "proof, or a bad ticket",
            s409="the change_code ticket was used before, or is stale",
            s410="record destroyed"),
        "/v1/status": _get("Role, term, commit index, leader, health (healthy: false and a "
                           "reason while the node waits for its disk)",
                           {"200": _resp("status", _STATUS)}),
        "/v1/admin": _post(
            "Operator operations signed with the fleet admin key: status (with details: "
            "records, journal, request, connection and open-file statistics), transfer "
            "(leadership to args.to or the best follower), compact (snapshot and compact "
            "the journal now), member (the leader commits one Raft membership change: "
            "rem revokes the certificate cert_sha256 names, add pins it)",
            _body({"op": {"type": "string",
                          "enum": ["status", "transfer", "compact", "member"]},
                   "args": _obj({"to": {"type": "string", "description": "transfer: a node "
                                                                          "id"},
                                 "change": {"type": "string", "enum": ["add", "rem"],
                                            "description": "member"},
                                 "node": {"type": "string", "description": "member: node id"},
                                 "addr": {"type": "string",
                                          "description": "member: Raft address host:port"},
                                 "cert_sha256": {"type": "string",
                                                 "pattern": "^[0-9a-f]{64}$",
                                                 "description": "member: SHA-256 of the "
                                                 "certificate's DER (revoked by rem, pinned "
                                                 "by add)"}}),
                   "ts": _int(0, _U63, "the signer's clock (Unix ms), within 30 s of the "
                                       "node's"),
                   "nonce": _bin(16), "sig": _bin(64, 64, "Ed25519 by the fleet admin key")},
                  ["op", "args", "ts", "nonce", "sig"]),
            {"200": _resp("done: status details, {transferred, leader}, {compacting} or "
                          "{changed, members}",
                          {"type": "object"})},
            401, 409, s400="malformed, transfer to a node that is not another of this "
                           "fleet's, or a malformed membership change",
            s401="forged, stale, replayed or for another node",
            s409="transfer refused (this node must lead; the target must be connected and "
                 "caught up), or membership change refused (not the leader, removing "
                 "itself, not a member, already a member, another change pending)"),
        "/v1/trust": _get(
            "The published fleet bundle with witness proofs (clients verify all)",
            {"200": _resp("signed bundle", _obj({
                k: {"type": "string", "format": "binary"}
                for k in ("bundle", "operator_sig", "statement", "witness_sig", "sth",
                          "sth_sig")} | {
                "leaf_index": _int(),
                "inclusion": {"type": "array", "items": {"type": "string",
                                                         "format": "binary"}},
                "consistency": {"type": "array", "items": {"type": "string",
                                                           "format": "binary"}}}))},
            404, params=[{"name": "since", "in": "query", "schema": _int(),
                          "description": "tree size the client saw last: the consistency "
                                         "proof is between it and the served tree head"}],
            s404="nothing published to this node yet", s400="since is not an integer >= 0"),
        "/v1/deployment": _get(
            "A fleet's operator-signed deployment record (node key statements)",
            {"200": _resp("record", _obj({"record": {"type": "string", "format": "binary"},
                                          "operator_sig": {"type": "string",
                                                           "format": "binary"}}))},
            404, params=[{"name": "fleet", "in": "query", "schema": {"type": "string"}}],
            s404="no record for that fleet here"),
        "/openapi.json": {"get": {"summary": "This document (JSON)",
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "headers": {P.TIME_HEADER: _TIME_REF}},
                                                **_errors(*_ANY)}}},
    },
    "components": {"schemas": {"Error": ERROR}, "headers": {"VaultTime": _TIME}},
}
