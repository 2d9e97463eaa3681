"""Real replies of every endpoint, success and each error it can give, checked
against the OpenAPI document the node serves (``GET /openapi.json``).

One real 3-node fleet with a witness and a published bundle.  Each scenario
provokes one documented outcome on purpose (a 409 stale ticket, a 410 after the
guess limit, a 429 from a tenant with a tiny rate, a 503 once two nodes are
stopped, ...) and asserts that it got it; every reply is then checked against
the served document: the status is one the operation lists, the body fits the
schema of that status (error replies the ``Error`` schema), and the headers the
document declares are present.  At the end, every status the document lists
for every operation must have been seen, except those no test can provoke on
purpose (``UNPROVOKED``): the document and the node cannot drift apart in
either direction without this test failing.

(The schema-driven fuzzing of the API checks replies to malformed requests;
this test checks the replies of well-formed flows and of each documented
refusal.)
"""
import json
import os

import pytest
from conftest import free_base_port, make_fleet, vault_cli

from vault_raft.api import binding as P
from vault_raft.api import channel as CH
from vault_raft.api import flows
from vault_raft.crypto import opaque
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.fleet import tenants as T
from vault_raft.fleet.config import ADMIN_KEY_FILE, FleetInfo
from vault_raft.fleet.keystore import load_signing_key
from vault_raft.node.admin import sign_request
from vault_raft.ops import witness_server
from vault_raft.ops.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

# Statuses a document may list that no scenario provokes on purpose: a node bug
# (500), a client too slow to send its body (408) or an odd Expect (417), a node
# down for its disk (503 on paths that never commit), and a malformed HTTP request
# on paths whose 400 has no other cause.
UNPROVOKED = {"*": {500, 408, 417},
              "/v1/status": {400, 503}, "/v1/deployment": {400, 503}, "/openapi.json": {400, 503},
              "/v1/trust": {503}, "/v1/enroll/start": {503}, "/v1/admin": {503}}


# ------------------------------------------------------------ the document

class Document:
    def __init__(self, doc: dict):
        self.doc = doc

    def resolve(self, s: dict) -> dict:
        while "$ref" in s:
            node = self.doc
            for part in s["$ref"].lstrip("#/").split("/"):
                node = node[part]
            s = node
        return s

    def operation(self, path: str, method: str) -> dict | None:
        return self.doc["paths"].get(path, {}).get(method.lower())

    def statuses(self, path: str, method: str) -> set[int]:
        op = self.operation(path, method)
        if op is not None:
            return {int(s) for s in op["responses"]}
        item = self.doc["paths"].get(path)
        if item is not None:  # a method the path does not have: its operations' errors
            return {int(s) for o in item.values() for s in o["responses"] if int(s) >= 400}
        return {404}  # no such path

    def response(self, path: str, method: str, status: int) -> dict | None:
        op = self.operation(path, method) or next(iter(self.doc["paths"].get(path, {}).values()),
                                                  None)
        return (op or {}).get("responses", {}).get(str(status))

    def schema(self, path: str, method: str, status: int) -> dict | None:
        r = self.response(path, method, status)
        if r is not None and "content" in r:
            return self.resolve(next(iter(r["content"].values()))["schema"])
        if status >= 400:  # the document's error map (at least {error, message})
            return self.doc.get("components", {}).get("schemas", {}).get("Error") or {
                "type": "object", "required": ["error", "message"]}
        return None

    def errors(self, schema: dict, value, where: str = "$") -> list[str]:
        """Why ``value`` (decoded msgpack) does not fit ``schema`` (empty: it fits)."""
        schema = self.resolve(schema)
        types = schema.get("type")
        if types is not None:
            types = [types] if isinstance(types, str) else types
            if not any(_is(value, t, schema.get("format")) for t in types):
                return [f"{where}: {type(value).__name__} is not {types} "
                        f"{schema.get('format', '')}"]
        out = []
        if "enum" in schema and value not in schema["enum"]:
            out.append(f"{where}: {value!r} not in {schema['enum']}")
        if isinstance(value, (bytes, str)):
            if len(value) < schema.get("minLength", 0):
                out.append(f"{where}: length {len(value)} < {schema['minLength']}")
            if len(value) > schema.get("maxLength", len(value)):
                out.append(f"{where}: length {len(value)} > {schema['maxLength']}")
        if _is(value, "integer", None):
            if value < schema.get("minimum", value) or value > schema.get("maximum", value):
                out.append(f"{where}: {value} outside {schema.get('minimum')}.."
                           f"{schema.get('maximum')}")
        if isinstance(value, list):
            if len(value) > schema.get("maxItems", len(value)):
                out.append(f"{where}: {len(value)} items > {schema['maxItems']}")
            for i, v in enumerate(value):
                out += self.errors(schema.get("items", {}), v, f"{where}[{i}]")
        if isinstance(value, dict):
            out += [f"{where}: {k} missing" for k in schema.get("required", []) if k not in value]
            for k, sub in schema.get("properties", {}).items():
                if k in value:
                    out += self.errors(sub, value[k], f"{where}.{k}")
        return out


def _is(value, t: str, fmt: str | None) -> bool:
    if t == "string":
        return isinstance(value, bytes) if fmt == "binary" else isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    classes: dict[str, type | tuple[type, ...]] = {
        "boolean": bool, "object": dict, "array": list, "null": type(None),
        "number": (int, float)}
    return isinstance(value, classes[t])


# ------------------------------------------------------------------ the fleet

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("openapi")
    wdir = str(base / "witness")
    port = free_base_port(1) + 1
    assert vault_cli("witness", "init", "--dir", wdir, "--port", str(port)).returncode == 0
    wproc = witness_server.spawn(wdir)
    fleet_dir = make_fleet(base, 3, max_attempts=10)
    p = os.path.join(fleet_dir, "fleet.json")
    d = json.load(open(p))
    d["ksf"] = IDENTITY_KSF.to_dict()  # this test is about replies, not Argon2id's cost
    json.dump(d, open(p, "w"))
    cl = LocalCluster(fleet_dir)
    try:
        cl.start()
        cl.wait_leader(30)
        cl.wait_healthy(timeout=30)
        yield {"cl": cl, "dir": fleet_dir, "base": base, "witness": f"http://127.0.0.1:{port}",
               "wdir": wdir}
    finally:
        cl.stop(timeout=5)
        witness_server.stop(wproc)


class Api:
    """Raw requests over the pinned channel; every reply checked against the
    served document."""

    def __init__(self, world):
        self.cl, self.dir = world["cl"], world["dir"]
        self.fleet = FleetInfo.load(os.path.join(self.dir, "fleet.json"))
        channel = CH.for_fleet(self.fleet)
        assert channel is not None, "the fleet pins a channel CA"
        self.channel = channel
        self.fid = self.fleet.fleet_id
        self.local = T.local_token_source(self.dir, self.fid)
        self.seen: set[tuple[str, str, int]] = set()
        self.problems: list = []
        self.doc: Document | None = None

    def url(self, nid: str | None = None) -> str:
        return self.cl.api[nid or self.cl.ids[0]]

    def raw(self, method: str, path: str, data: bytes | None = None,
            content_type: str = P.CONTENT_TYPE, nid: str | None = None):
        conn = self.channel.connection(self.url(nid), 15)
        try:
            headers = {"Content-Type": content_type} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def call(self, method: str, path: str, body: dict | None = None, *, expect: int,
             data: bytes | None = None, content_type: str = P.CONTENT_TYPE,
             nid: str | None = None, reason: str | None = None):
        if body is not None:
            data = P.pack(body)
        status, headers, raw = self.raw(method, path, data, content_type, nid)
        bare = path.split("?")[0]
        out = self.check(method, bare, status, headers, raw)
        assert status == expect, (method, path, status, expect, out)
        if reason is not None:
            assert out.get("reason") == reason, out
        return out

    def check(self, method: str, path: str, status: int, headers: dict, raw: bytes):
        doc = self.doc
        assert doc is not None, "the served document is fetched first"
        # a method the path does not have (405) counts for the path's operations
        self.seen.add((path, method if doc.operation(path, method) else "*", status))
        if status not in doc.statuses(path, method):
            self.problems.append((method, path, status, "status not documented"))
        r = doc.response(path, method, status) or {}
        for name in r.get("headers", {}):
            if name.lower() not in headers:
                self.problems.append((method, path, status, f"no {name} header"))
        if path == "/openapi.json" and status == 200:
            return json.loads(raw)
        if not headers.get("content-type", "").startswith(P.CONTENT_TYPE):
            self.problems.append((method, path, status, f"content type "
                                                        f"{headers.get('content-type')}"))
            return {}
        out = P.unpack(raw)
        schema = doc.schema(path, method, status)
        if schema is not None:
            self.problems += [(method, path, status, e) for e in doc.errors(schema, out)]
        if status == 429:
            if not headers.get("retry-after", "").isdigit():
                self.problems.append((method, path, status, "no Retry-After"))
            elif out.get("retry_after") != int(headers["retry-after"]):
                self.problems.append((method, path, status, "retry_after != Retry-After"))
        return out

    def post(self, path: str, body: dict | None, expect: int, **kw):
        return self.call("POST", path, body, expect=expect, **kw)

    # ----- the client's half of each flow
    def tok(self, user: bytes) -> str:
        return self.local(user)

    def user_body(self, user: bytes, **fields) -> dict:
        return {"user": user.decode(), "auth": self.tok(user), **fields}

    def as_user(self, body: dict) -> dict:
        """A flow's body (api/flows.py), its user as text, with the tenant token."""
        return self.user_body(body["user"], **{k: v for k, v in body.items() if k != "user"})

    def enroll_start(self, user: bytes, code: bytes, purpose: str = "enroll", **kw):
        reg = flows.Registration(self.fleet, user, code, purpose)
        out = self.post("/v1/enroll/start", self.as_user(reg.start_body()), 200, **kw)
        return reg.finish(out), out

    def upload(self, user: bytes, purpose: bytes, binding: bytes, secret: bytes) -> bytes:
        return flows.upload(self.fleet, user, purpose, binding, secret)

    def enroll_body(self, user: bytes, code: bytes, secret: bytes, max_attempts: int = 10):
        record, start = self.enroll_start(user, code)
        return self.as_user(flows.enroll_finish_body(self.fleet, user, record, start, secret,
                                                     max_attempts))

    def enroll(self, user: bytes, code: bytes, secret: bytes, max_attempts: int = 10):
        return self.post("/v1/enroll/finish", self.enroll_body(user, code, secret, max_attempts),
                         201)

    def start(self, user: bytes, code: bytes, expect: int = 200, **kw):
        login = flows.Login(self.fleet, user, code)
        return login, self.post("/v1/recover/start", self.as_user(login.start_body()), expect,
                                **kw)

    def recover(self, user: bytes, code: bytes):
        """A full recovery: (session key, token)."""
        login, out = self.start(user, code)
        login.finish(out)
        fin = self.post("/v1/recover/finish", self.as_user(login.finish_body()), 200)
        login.open_release(fin)
        return login.session_key, login.token

    def manage_body(self, user: bytes, session_key: bytes, token: bytes, op: str,
                    payload: bytes = b"", ticket: bytes = b"") -> dict:
        return self.as_user(flows.manage_body(user, session_key, token, op, payload, ticket))


def test_every_reply_fits_the_served_openapi_document(world):
    api = Api(world)
    cl = api.cl
    # the document, as a node serves it
    status, headers, raw = api.raw("GET", "/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    api.doc = Document(json.loads(raw))
    api.call("GET", "/openapi.json", expect=200)
    for path, method in [("/openapi.json", "POST"), ("/v1/status", "POST"), ("/v1/trust", "POST"),
                         ("/v1/deployment", "POST"), ("/v1/enroll/start", "GET"),
                         ("/v1/enroll/finish", "GET"), ("/v1/recover/start", "GET"),
                         ("/v1/recover/finish", "GET"), ("/v1/manage", "GET"),
                         ("/v1/admin", "GET")]:
        api.call(method, path, expect=405)
    api.call("GET", "/v1/no-such-path", expect=404)
    api.call("GET", "/v1/status", expect=200)

    # ---- trust: nothing published yet, then a published bundle
    api.call("GET", "/v1/trust?since=0", expect=404)
    api.call("GET", "/v1/deployment?fleet=" + api.fid, expect=404)
    op = str(world["base"] / "op")
    r = vault_cli("operator", "init", "--dir", op, "--namespace", "acme", "--witness",
                  world["witness"], "--witness-key", f"@{world['wdir']}/witness.pub")
    assert r.returncode == 0, r.stderr
    r = vault_cli("fleet", "publish", "--fleet", api.dir, "--operator", op)
    assert r.returncode == 0, r.stderr
    api.call("GET", "/v1/trust?since=0", expect=200)
    api.call("GET", "/v1/trust?since=1", expect=200)
    api.call("GET", "/v1/trust?since=x", expect=400)
    api.call("GET", "/v1/deployment?fleet=" + api.fid, expect=200)
    api.call("GET", "/v1/deployment?fleet=nope", expect=404)

    # ---- every POST: malformed body, wrong content type, too large, missing token
    for path in ("/v1/enroll/start", "/v1/enroll/finish", "/v1/recover/start",
                 "/v1/recover/finish", "/v1/manage", "/v1/admin"):
        api.post(path, None, 400, data=b"\xc1 not msgpack")
        api.post(path, {"user": "a"}, 415, content_type="text/plain")
        api.post(path, None, 413, data=P.pack({"pad": b"x" * (P.MAX_BODY + 10)}))
        if path != "/v1/admin":
            api.post(path, {"user": "alice"}, 401, reason="token")

    # ---- enroll
    code, secret = b"alice's code", b"alice's key"
    api.post("/v1/enroll/start", api.user_body(b"alice", request=b"x" * 31), 400)
    api.enroll(b"alice", code, secret)
    body = api.enroll_body(b"alice", b"another code", b"other")
    api.post("/v1/enroll/finish", body, 409)                      # an active record exists
    api.post("/v1/enroll/finish", body, 409, reason="replayed")   # the same ticket again
    api.post("/v1/enroll/finish", dict(body, ticket=b"\x01" * 100), 401)
    api.post("/v1/enroll/finish", dict(body, record=b"\x00" * 191), 400)
    stale = api.enroll_body(b"sam", b"sam's code", b"sam's key")
    api.enroll(b"sam", b"sam's code", b"sam's key")
    api.post("/v1/enroll/finish", stale, 409, reason="stale")

    # ---- recover
    api.start(b"alice", b"wrong code")                             # a counted wrong guess
    api.post("/v1/recover/start", api.user_body(b"alice", ke1=b"\x00" * 95), 400)
    login, out = api.start(b"alice", code)
    done = login.finish(out)
    api.post("/v1/recover/finish", api.user_body(b"alice", token=out["token"], ke3=b"\x00" * 64),
             401)
    api.post("/v1/recover/finish", api.user_body(b"alice", token=out["token"], ke3=b"\x00" * 63),
             400)
    fin = api.post("/v1/recover/finish", api.user_body(b"alice", token=out["token"],
                                                       ke3=done.ke3), 200)
    assert fin["failed_attempts"] == 1 and fin["max_attempts"] == 10

    # ---- manage: each operation, then each refusal
    sk, token = api.recover(b"alice", code)
    api.post("/v1/manage", api.manage_body(b"alice", sk, token, "change_secret",
                                           api.upload(b"alice", b"change_secret", token,
                                                      b"new key")), 200)
    sk, token = api.recover(b"alice", code)
    new_record, start = api.enroll_start(b"alice", b"new code", "change_code")
    cc = api.manage_body(b"alice", sk, token, "change_code", new_record, start["ticket"])
    assert api.post("/v1/manage", cc, 200)["done"] == "changed"
    sk, token = api.recover(b"alice", b"new code")
    again = api.manage_body(b"alice", sk, token, "change_code", new_record, start["ticket"])
    api.post("/v1/manage", again, 409, reason="replayed")
    sk, token = api.recover(b"alice", b"new code")
    api.post("/v1/manage", dict(api.manage_body(b"alice", sk, token, "delete"), proof=b"\0" * 32),
             401)
    api.post("/v1/manage", dict(api.manage_body(b"alice", sk, token, "delete"), op="rename"), 400)
    assert api.post("/v1/manage", api.manage_body(b"alice", sk, token, "delete"),
                    200)["done"] == "deleted"

    # ---- the guess limit: dora (limit 1) is destroyed; her open attempt and her
    # fresh authorisation then meet 410
    dcode = b"dora's code"
    api.enroll(b"dora", dcode, b"dora's key", max_attempts=1)
    sk, token = api.recover(b"dora", dcode)                        # authorises one change
    login, out = api.start(b"dora", dcode)                         # attempts_left 0
    assert out["attempts_left"] == 0
    done = login.finish(out)
    api.start(b"dora", dcode, expect=410)                          # the limit: destroyed
    api.post("/v1/recover/finish", api.user_body(b"dora", token=out["token"], ke3=done.ke3), 410)
    api.post("/v1/manage", api.manage_body(b"dora", sk, token, "delete"), 410)

    # ---- rate limits: a tenant whose users get one request, then 429
    key = T.add_tenant(api.dir, "slow", limits={"tenant_rate": 0, "user_rate": 0.001,
                                                "user_burst": 1})
    slow = load_signing_key(key)
    for path in ("/v1/enroll/start", "/v1/enroll/finish", "/v1/recover/start",
                 "/v1/recover/finish", "/v1/manage"):
        user = ("rl" + path.replace("/", "-")).encode()
        auth = T.mint("slow", slow, user, api.fid)

        def reloaded(path=path, user=user, auth=auth):  # on a request after the list changed
            got = api.raw("POST", path, P.pack({"user": user.decode(), "auth": auth}))
            return got if got[0] != 401 else None

        status, _, raw = wait_until(reloaded, 10, 0.1, what=f"{path}: the tenant list reloaded")
        assert status == 400, (path, status, P.unpack(raw))       # took the one token
        api.post(path, {"user": user.decode(), "auth": auth}, 429)

    # ---- admin
    admin_sk = load_signing_key(os.path.join(api.dir, ADMIN_KEY_FILE))
    leader = cl.leader()
    follower = next(n for n in cl.ids if n != leader)
    api.post("/v1/admin", sign_request(admin_sk, api.fid, leader, "status"), 200, nid=leader)
    forged = sign_request(admin_sk, api.fid, follower, "status")   # for another node
    api.post("/v1/admin", forged, 401, nid=leader)
    api.post("/v1/admin", sign_request(admin_sk, api.fid, leader, "transfer", {"to": "nope"}),
             400, nid=leader)
    api.post("/v1/admin", sign_request(admin_sk, api.fid, follower, "transfer", {}), 409,
             nid=follower)

    # ---- no majority: 503 from every endpoint that commits
    sk, token = api.recover(b"sam", b"sam's code")
    z_login, z_out = api.start(b"sam", b"sam's code")
    z_done = z_login.finish(z_out)
    xi = api.enroll_body(b"xi", b"xi's code", b"xi's key")
    keep = cl.ids[0]
    cl.stop([n for n in cl.ids if n != keep], timeout=10)

    def unavailable():
        ke1 = opaque.ClientLogin.start(b"x", ksf=api.fleet.ksf, context=api.fleet.context)[1]
        got = api.raw("POST", "/v1/recover/start", P.pack(api.user_body(b"nobody", ke1=ke1)),
                      nid=keep)
        return got if got[0] == 503 else None

    status, headers, raw = wait_until(unavailable, 30, 0.2, what=f"503 from {keep} alone")
    api.check("POST", "/v1/recover/start", status, headers, raw)
    api.post("/v1/enroll/finish", xi, 503, nid=keep)
    api.post("/v1/recover/finish", api.user_body(b"sam", token=z_out["token"], ke3=z_done.ke3),
             503, nid=keep)
    api.post("/v1/manage", api.manage_body(b"sam", sk, token, "delete"), 503, nid=keep)

    # ---- every reply fitted the document, and every documented status was seen
    assert not api.problems, "\n".join(map(str, api.problems))
    missing = []
    for path, item in api.doc.doc["paths"].items():
        for method, op in item.items():
            skip = UNPROVOKED["*"] | UNPROVOKED.get(path, set())
            for st in op["responses"]:
                if int(st) not in skip and (path, method.upper(), int(st)) not in api.seen \
                        and (path, "*", int(st)) not in api.seen:
                    missing.append((method.upper(), path, st))
    assert not missing, f"documented but never seen: {missing}"
    print(f"openapi replies: {len(api.seen)} (path, method, status) seen")
