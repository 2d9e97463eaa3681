"""Schema-driven fuzzing of a real node (issue 15, acceptance 1).

Requests are generated from the OpenAPI document (vault_raft/openapi.py):
msgpack bodies that fit the schemas or have one field missing, wrong, out of
bounds or extra, plus HTTP-level variations (methods, paths, content types,
gzip/deflate bodies valid and corrupt, chunked framing, Expect, garbage and
oversized bodies, query strings).  Every reply must be a status the document
lists for the operation, never a 5xx but a documented 503, with a body that
fits the document's schema and the node's clock in ``Vault-Time``; no node
log may hold a traceback; and the commit index may move only by the attempts
that well-formed ``recover/start`` requests were answered for.

The budget is 1,000 requests in ``make test`` and 5,000 with
``VAULT_RAFT_PROFILE=long`` (``VAULT_RAFT_FUZZ`` overrides both).
"""
import gzip
import json
import os
import time
import urllib.parse
import zlib

import msgpack
import openapi_check as O
import pytest
from conftest import make_fleet
from hostile import LogWatch, exchange
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault_raft import client as C
from vault_raft.api.openapi import OPENAPI
from vault_raft.crypto import opaque
from vault_raft.ops.cluster import LocalCluster

pytestmark = pytest.mark.cluster

LONG = os.environ.get("VAULT_RAFT_PROFILE") == "long"
BUDGET = int(os.environ.get("VAULT_RAFT_FUZZ", 5000 if LONG else 1000))
PATHS = sorted(OPENAPI["paths"])
ODD_PATHS = ["/", "/v1/nope", "/v1/recover/start/", "/v1/%zz", "/v1/st%61tus", "//v1/status",
             "/v1/status/..", "/v1/admin?op=status", "/" + "x" * 300]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
pk = lambda d: msgpack.packb(d, use_bin_type=True)  # noqa: E731


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = make_fleet(tmp_path_factory.mktemp("fuzz"), 3)
    cl = LocalCluster(d)
    cl.start()
    try:
        cl.wait_leader(30)
        cl.wait_healthy(timeout=30)
        cli = C.Client(os.path.join(d, "fleet.json"))
        cli.enroll("alice", "alice's code", b"alice's key", max_attempts=100)
        ke1s = [opaque.ClientLogin.start(b"guess %d" % i, ksf=cli.fleet.ksf,
                                         context=cli.fleet.context)[1] for i in range(8)]
        token = getattr(cli, "token", None)  # where the fleet checks tenant tokens
        tokens = [token(u) for u in (b"alice", "\u00e9l\u00e8ve".encode(), b"nobody")] \
            if token is not None else ["not a token"]
        yield cl, cli, ke1s, tokens
    finally:
        cl.stop(timeout=5)


@st.composite
def requests(draw, ke1s, tokens):
    """(method, path, raw request bytes, what the body was)."""
    if draw(st.integers(0, 9)) == 0:
        path = draw(st.sampled_from(ODD_PATHS))
    else:
        path = draw(st.sampled_from(PATHS))
    item = OPENAPI["paths"].get(path.split("?")[0], {})
    if item and draw(st.integers(0, 4)):
        method = next(iter(item)).upper()
        if method == "GET" and draw(st.booleans()):
            method = "HEAD"
    else:
        method = draw(st.sampled_from(METHODS))
    headers = {"Host": "node", "Connection": "close"}
    schema = O.request_schema(path, "POST")
    payload = b""
    kind = "none"
    if method == "POST" or draw(st.integers(0, 5)) == 0:
        kind = "schema"
        if schema is not None:
            obj = draw(O.body(schema, {
                "user": st.sampled_from([b"alice", "alice", b"nobody", "\u00e9l\u00e8ve"]),
                "ke1": st.sampled_from(ke1s),
                "auth": st.sampled_from(tokens),
                "deadline_ms": st.just(int(time.time() * 1000) + 10_000)}))
        else:
            obj = draw(O.junk())
        payload = pk(obj)
        form = draw(st.sampled_from(["plain"] * 6 + ["garbage", "list", "truncated", "huge",
                                                      "empty", "nested"]))
        if form != "plain":
            kind = form
        if form == "garbage":
            payload = draw(st.binary(min_size=1, max_size=200))
        elif form == "list":
            payload = pk(draw(st.lists(st.integers(-(1 << 63), O.U64), max_size=3)))
        elif form == "truncated" and len(payload) > 1:
            payload = payload[:draw(st.integers(1, len(payload) - 1))]
        elif form == "huge":
            payload = pk({"user": b"alice", "pad": b"x" * 70_000})
        elif form == "empty":
            payload = b""
        elif form == "nested":
            payload = b"\x81\xa1a" + b"\x91" * 3000 + b"\xc0"
        headers["Content-Type"] = draw(st.sampled_from(
            ["application/msgpack"] * 8 + [None, "application/json", "text/plain",
                                           "application/msgpack; charset=utf-8"]))
        enc = draw(st.sampled_from(["none"] * 8 + ["gzip", "gzip-bad", "deflate",
                                                   "deflate-bad", "br", "identity"]))
        if enc == "gzip":
            payload = gzip.compress(payload)
        elif enc == "deflate":
            payload = zlib.compress(payload)
        elif enc in ("gzip-bad", "deflate-bad"):
            payload = draw(st.binary(min_size=1, max_size=64))
        if enc != "none":
            headers["Content-Encoding"] = enc.split("-")[0]
            kind += f"+{enc}"
        framing = draw(st.sampled_from(["length"] * 8 + ["chunked", "chunked-bad"]))
        if framing == "length":
            headers["Content-Length"] = str(len(payload))
        else:
            headers["Transfer-Encoding"] = "chunked"
            size = f"{len(payload):x}" if framing == "chunked" else "zz"
            payload = size.encode() + b"\r\n" + payload + b"\r\n0\r\n\r\n"
            kind += f"+{framing}"
    if path == "/v1/trust" and draw(st.booleans()):
        path += "?since=" + draw(st.sampled_from(["0", "5", "-1", "x", "1e3", "99999999999"]))
    if path == "/v1/deployment" and draw(st.booleans()):
        path += "?fleet=" + draw(st.sampled_from(["", "f00d", "%00", "a" * 100]))
    extra = draw(st.sampled_from([None] * 10 + ["expect-continue", "expect-bad", "long",
                                                 "many"]))
    if extra == "expect-continue":
        headers["Expect"] = "100-continue"
    elif extra == "expect-bad":
        headers["Expect"] = "something"
    elif extra == "long":
        headers["X-Long"] = "v" * 5000
    elif extra == "many":
        headers.update({f"X-{i}": "1" for i in range(40)})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()
                                             if v is not None]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    return method, path, raw, kind


def _check(method, path, status, headers, body, kind) -> tuple[list[str], dict | None]:
    """Problems with one reply (empty: it is as documented), and its map."""
    bare = urllib.parse.unquote(path.split("?")[0])
    problems = []
    if status >= 500 and status != 503:
        problems.append(f"{status}")
    allowed = O.documented(bare, method)
    if status not in allowed:
        problems.append(f"{status} is not documented for {method} {bare} ({sorted(allowed)})")
    if not headers.get("vault-time", "").isdigit():
        problems.append("no Vault-Time")
    if method == "HEAD":
        return problems, None
    if bare == "/openapi.json" and status == 200:
        if json.loads(body) != json.loads(json.dumps(OPENAPI)):
            problems.append("served OpenAPI differs")
        return problems, None
    if not headers.get("content-type", "").startswith("application/msgpack"):
        return problems + [f"content type {headers.get('content-type')}"], None
    try:
        out = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # noqa: BLE001
        return problems + [f"body is not msgpack: {exc}"], None
    schema = O.response_schema(bare, method, status)
    if schema is not None:
        problems += O.errors(schema, out)
    elif not isinstance(out, dict):
        problems.append("body is not a map")
    if status == 503 and isinstance(out, dict) and out.get("error") not in ("unavailable",
                                                                            "expired"):
        problems.append(f"503 with error {out.get('error')}")
    if status == 405 and "allow" not in headers:
        problems.append("405 without Allow")
    return problems, out


def test_fuzz_the_api_from_the_openapi_schemas(fleet):
    cl, cli, ke1s, tokens = fleet
    nid = cl.leader()
    url = cl.api[nid]
    before = cl.status(nid)
    watches = [LogWatch(cl, n) for n in cl.ids]
    seen: dict = {"requests": 0, "commits": 0, "maybe": 0, "by_status": {}}
    failures: list[tuple] = []

    @settings(max_examples=BUDGET, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(req=requests(ke1s, tokens))
    def run(req):
        method, path, raw, kind = req
        t0 = time.perf_counter()
        try:
            status, headers, body = exchange(cl, url, raw, timeout=10,
                                             head_only=method == "HEAD")
        except (ConnectionError, OSError) as exc:
            failures.append((method, path, kind, f"no reply: {exc}", raw[:200]))
            return
        seen["requests"] += 1
        seen["io"] = seen.get("io", 0) + time.perf_counter() - t0
        seen["by_status"][status] = seen["by_status"].get(status, 0) + 1
        problems, out = _check(method, path, status, headers, body, kind)
        if problems:
            failures.append((method, path, kind, problems, raw[:200], body[:200]))
        if path.split("?")[0] == "/v1/recover/start" and method == "POST":
            if status in (200, 410):
                seen["commits"] += 1  # a well-formed guess: counted
            elif status == 503 and isinstance(out, dict) and out.get("proposed") is not False:
                seen["maybe"] += 1

    run()
    after = cl.status(nid)
    print(f"fuzz: {seen['requests']} requests, replies {sorted(seen['by_status'].items())}, "
          f"{seen['commits']} counted guesses, {seen.get('io', 0):.1f} s waiting for replies")
    kinds = sorted({(f[0], f[1].split("?")[0], str(f[3])[:120]) for f in failures})
    assert not failures, (len(failures), "\n".join(map(str, kinds[:20])), failures[:3])
    assert seen["requests"] >= BUDGET * 0.9
    # only the well-formed guesses were committed (a new leader commits a no-op)
    moved = after["commit_index"] - before["commit_index"]
    elections = after["term"] - before["term"]
    assert seen["commits"] <= moved <= seen["commits"] + seen["maybe"] + elections, \
        (before, after, seen)
    for w in watches:
        lines = w.lines()
        assert not w.tracebacks(), "\n".join(lines[:80])
        assert not [ln for ln in lines if " ERROR " in ln], "\n".join(lines[:80])
        assert len(lines) <= 40, "\n".join(lines)  # rate-limited: a few lines per kind


def test_real_replies_fit_the_document(fleet):
    """The well-formed flows: every reply (201, 200 with max_attempts, the
    manage ops, status) fits its schema."""
    cl, _, _, _ = fleet
    problems: list = []

    class Checked(C.Client):
        def _post_once(self, url, path, body):
            status, out = super()._post_once(url, path, body)
            schema = O.response_schema(path, "POST", status)
            if schema is None:
                problems.append((path, status, "no reply schema"))
            else:
                problems.extend((path, status, e) for e in O.errors(schema, out))
            if status not in O.documented(path, "POST"):
                problems.append((path, status, "undocumented"))
            return status, out

    cli = Checked(os.path.join(cl.dir, "fleet.json"))
    cli.enroll("zoe", "zoe's code", b"zoe's key", max_attempts=4)
    with pytest.raises(C.WrongCode):
        cli.recover("zoe", "wrong")
    rec = cli.recover("zoe", "zoe's code")
    assert rec.max_attempts == 4 and rec.failed_attempts == 1
    cli.change_secret("zoe", "zoe's code", b"zoe's new key")
    cli.change_code("zoe", "zoe's code", "zoe's new code")
    cli.delete("zoe", "zoe's new code")
    with pytest.raises(C.AlreadyEnrolled):
        cli.enroll("alice", "x", b"x")
    for nid in cl.ids:
        status, headers, body = exchange(cl, cl.api[nid], b"GET /v1/status HTTP/1.1\r\n"
                                                          b"Host: n\r\nConnection: close\r\n\r\n")
        schema = O.response_schema("/v1/status", "GET", status)
        assert schema is not None, status
        problems += O.errors(schema, msgpack.unpackb(body, raw=False))
        code, out = cl.admin(nid, "status")
        assert code == 200
        schema = O.response_schema("/v1/admin", "POST", 200)
        assert schema is not None
        problems += O.errors(schema, out)
    assert not problems, problems
