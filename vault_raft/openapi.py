"""OpenAPI 3.1 description of a node's client API (served at GET /openapi.json)."""

_BIN = {"type": "string", "format": "binary"}


def _body(props: dict, required: list[str]) -> dict:
    return {"required": True, "content": {"application/msgpack": {"schema": {
        "type": "object", "properties": props, "required": required}}}}


def _resp(desc: str, props: dict | None = None) -> dict:
    r: dict = {"description": desc}
    if props is not None:
        r["content"] = {"application/msgpack": {"schema": {"type": "object", "properties": props}}}
    return r


_ERR = {"error": {"type": "string"}, "message": {"type": "string"}}
_USER = {"type": "string", "format": "binary", "minLength": 1, "maxLength": 256,
         "description": "user id, 1..256 bytes"}
_COMMON = {"400": _resp("malformed input; nothing changed", _ERR),
           "415": _resp("body is not application/msgpack", _ERR),
           "503": _resp("no majority reachable in time; nothing revealed", _ERR)}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "vault-raft node API", "version": "1",
             "description": "Bodies are msgpack maps. A recovery guess is counted by a majority "
                            "commit before KE2 is computed. See docs/api.md."},
    "paths": {
        "/v1/enroll/start": {"post": {
            "summary": "OPAQUE registration: evaluate the OPRF under a fresh credential "
                       "identifier and issue a single-use ticket (stores nothing)",
            "requestBody": _body({"user": _USER, "request": _BIN,
                                  "purpose": {"enum": ["enroll", "change_code"]}},
                                 ["user", "request"]),
            "responses": {"200": _resp("registration response and ticket", {
                "response": _BIN, "ticket": _BIN, "nonce": _BIN,
                "expires_ms": {"type": "integer"}}), **_COMMON}}},
        "/v1/enroll/finish": {"post": {
            "summary": "Store the OPAQUE record and the HPKE-encrypted secret (majority commit)",
            "requestBody": _body({"user": _USER, "record": _BIN, "ticket": _BIN, "upload": _BIN,
                                  "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100}},
                                 ["user", "record", "ticket", "upload"]),
            "responses": {"201": _resp("enrolled", {"enrolled": {"type": "boolean"},
                                                    "max_attempts": {"type": "integer"}}),
                          "401": _resp("ticket invalid, expired or for another user", _ERR),
                          "409": _resp("an active record exists, or the ticket was used or "
                                       "is stale", _ERR),
                          **_COMMON}}},
        "/v1/recover/start": {"post": {
            "summary": "Count an attempt (majority commit), then answer KE1 with KE2",
            "requestBody": _body({"user": _USER, "ke1": _BIN}, ["user", "ke1"]),
            "responses": {"200": _resp("KE2 (fake for unknown users)", {
                "ke2": _BIN, "token": _BIN, "attempts_left": {"type": "integer"}}),
                "410": _resp("record destroyed", _ERR), **_COMMON}}},
        "/v1/recover/finish": {"post": {
            "summary": "Verify KE3, release the secret (majority commit), encrypted to the session",
            "requestBody": _body({"user": _USER, "token": _BIN, "ke3": _BIN},
                                 ["user", "token", "ke3"]),
            "responses": {"200": _resp("released", {"secret_box": _BIN,
                                                    "failed_attempts": {"type": "integer"}}),
                          "401": _resp("KE3 did not verify / attempt expired or used", _ERR),
                          "410": _resp("record destroyed", _ERR), **_COMMON}}},
        "/v1/manage": {"post": {
            "summary": "change_secret, change_code or delete, with proof of a fresh recovery",
            "requestBody": _body({"user": _USER, "op": {"enum": ["change_secret", "change_code",
                                                                 "delete"]},
                                  "token": _BIN, "payload": _BIN, "proof": _BIN,
                                  "ticket": _BIN},
                                 ["user", "op", "token", "proof"]),
            "responses": {"200": _resp("done", {"done": {"type": "string"}}),
                          "401": _resp("no valid proof, or a bad ticket", _ERR),
                          "409": _resp("the change_code ticket was used before", _ERR),
                          "410": _resp("record destroyed", _ERR), **_COMMON}}},
        "/v1/status": {"get": {"summary": "Role, term, commit index, leader, health",
                               "responses": {"200": _resp("status", {})}}},
        "/v1/admin": {"post": {
            "summary": "Operator operations (status, transfer) signed with the fleet admin key",
            "requestBody": _body({"op": {"enum": ["status", "transfer"]}, "args": {"type": "object"},
                                  "ts": {"type": "integer"}, "nonce": _BIN, "sig": _BIN},
                                 ["op", "args", "ts", "nonce", "sig"]),
            "responses": {"200": _resp("done", {}),
                          "401": _resp("forged, stale, replayed or for another node", _ERR),
                          "409": _resp("transfer refused", _ERR)}}},
        "/v1/trust": {"get": {
            "summary": "The published fleet bundle with witness proofs (clients verify all)",
            "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer"},
                            "description": "tree size the client saw last: the consistency "
                                           "proof is between it and the served tree head"}],
            "responses": {"200": _resp("signed bundle", {
                k: _BIN for k in ("bundle", "operator_sig", "statement", "witness_sig", "sth",
                                  "sth_sig")} | {"leaf_index": {"type": "integer"},
                                                 "inclusion": {"type": "array", "items": _BIN},
                                                 "consistency": {"type": "array",
                                                                 "items": _BIN}}),
                          "404": _resp("nothing published to this node yet", _ERR)}}},
        "/v1/deployment": {"get": {
            "summary": "A fleet's operator-signed deployment record (node key statements)",
            "parameters": [{"name": "fleet", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": _resp("record", {"record": _BIN, "operator_sig": _BIN}),
                          "404": _resp("no record for that fleet here", _ERR)}}},
    },
}
