"""A real node against hand-made hostile requests: every malformed input is
the documented msgpack error map with a 4xx, one short log line at most,
never a traceback, and changes nothing."""
import gzip
import socket
import time
import zlib

import msgpack
import pytest
from conftest import make_fleet
from hostile import (
    LogWatch,
    connect,
    error_map,
    exchange,
    read_reply,
    request,
    set_limits,
    settled_commit_index,
)

from vault_raft import client as C
from vault_raft.crypto import opaque
from vault_raft.ops.cluster import LocalCluster

pytestmark = pytest.mark.cluster

_TOKEN = None  # user -> tenant token, where the fleet checks them: the input is what's bad


def pk(d):
    if isinstance(d, dict) and isinstance(d.get("user"), bytes) and _TOKEN is not None \
            and "auth" not in d:
        d = dict(d, auth=_TOKEN(d["user"]))
    return msgpack.packb(d, use_bin_type=True)


LIMITS = dict(header_timeout=1, body_timeout=1, idle_timeout=2, handshake_timeout=1)


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """One fleet for this module, with short timeouts (the defaults are
    exercised by test_connection_flood.py)."""
    d = make_fleet(tmp_path_factory.mktemp("hostile"), 3)
    set_limits(d, **LIMITS)
    cluster = LocalCluster(d)
    cluster.start()
    try:
        cluster.wait_leader(30)
        cluster.wait_healthy(timeout=30)
        yield cluster
    finally:
        cluster.stop(timeout=5)


def _cases(valid_ke1: bytes, enroll: dict):
    """(name, raw request bytes, expected status)."""
    post = lambda path, body, **kw: request("POST", path, body, **kw)  # noqa: E731
    long_path = "/v1/" + "a" * 5000
    many = {f"X-H{i}": "v" for i in range(40)}
    return [
        ("request line", b"GARBAGE\r\n\r\n", 400),
        ("header", b"POST /v1/recover/start HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        ("nul in path", b"POST /v1/\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        ("long request line", request("GET", long_path), 400),
        ("too many headers", request("GET", "/v1/status", headers=many), 400),
        ("negative length", request("POST", "/v1/recover/start", b"hi",
                                    headers={"Content-Length": "-1"}), 400),
        ("unknown transfer-encoding", post("/v1/recover/start", b"",
                                           headers={"Content-Length": None,
                                                    "Transfer-Encoding": "foo"}), 400),
        ("bad chunk", request("POST", "/v1/recover/start", b"zz\r\nhello\r\n0\r\n\r\n",
                              headers={"Content-Length": None,
                                       "Transfer-Encoding": "chunked"}), 400),
        ("corrupt gzip", post("/v1/recover/start", b"not gzip at all",
                              headers={"Content-Encoding": "gzip"}), 400),
        ("corrupt deflate", post("/v1/recover/start", b"not deflate",
                                 headers={"Content-Encoding": "deflate"}), 400),
        ("truncated gzip", post("/v1/recover/start", gzip.compress(pk({"user": b"a"}))[:-9],
                                headers={"Content-Encoding": "gzip"}), 400),
        ("brotli", post("/v1/recover/start", b"xx", headers={"Content-Encoding": "br"}), 400),
        ("zstd", post("/v1/recover/start", b"xx", headers={"Content-Encoding": "zstd"}), 400),
        ("gzip bomb", post("/v1/recover/start", gzip.compress(b"\x00" * (1 << 20)),
                           headers={"Content-Encoding": "gzip"}), 413),
        ("deflate of a bad map", post("/v1/recover/start", zlib.compress(b"\xc1\xc1"),
                                      headers={"Content-Encoding": "deflate"}), 400),
        ("expect", post("/v1/recover/start", b"{}", headers={"Expect": "teapot"}), 417),
        ("get a post", request("GET", "/v1/recover/start", ctype=None), 405),
        ("delete status", request("DELETE", "/v1/status", ctype=None), 405),
        ("unknown path", request("GET", "/v1/%zz", ctype=None), 404),
        ("too large", post("/v1/recover/start", b"\x00" * (70 * 1024)), 413),
        ("not msgpack type", post("/v1/recover/start", b"{}", ctype="application/json"), 415),
        ("max_attempts true", post("/v1/enroll/finish", pk(dict(enroll, max_attempts=True))),
         400),
        ("max_attempts 0", post("/v1/enroll/finish", pk(dict(enroll, max_attempts=0))), 400),
        ("deadline_ms true (enroll)", post("/v1/enroll/finish", pk(dict(enroll,
                                                                        deadline_ms=True))),
         400),
        ("deadline_ms true", post("/v1/recover/start", pk({
            "user": b"alice", "ke1": valid_ke1, "deadline_ms": True})), 400),
        ("deadline_ms float", post("/v1/recover/start", pk({
            "user": b"alice", "ke1": valid_ke1, "deadline_ms": 1e15})), 400),
        ("deadline_ms negative", post("/v1/recover/start", pk({
            "user": b"alice", "ke1": valid_ke1, "deadline_ms": -5})), 400),
        ("deadline_ms huge", post("/v1/recover/start", pk({
            "user": b"alice", "ke1": valid_ke1, "deadline_ms": (1 << 64) - 1})), 400),
        ("map key not str", post("/v1/recover/start", pk({1: 2})), 400),
        ("deep nesting", post("/v1/recover/start", b"\x81\xa1a" + b"\x91" * 2000 + b"\xc0"), 400),
    ]


def _valid_enroll(cli: C.Client, user: bytes) -> dict:
    """A well-formed enroll/finish body (real record, ticket and upload)."""
    record, start = cli._register(user, b"bob's code")
    return {"user": user, "record": record, "ticket": start["ticket"],
            "upload": cli._upload(user, b"bob's key", b"enroll", start["nonce"])}


def test_malformed_requests_get_the_error_map_and_change_nothing(cl):
    nid = cl.ids[0]
    url = cl.api[nid]
    global _TOKEN
    cli = C.Client(cl.dir + "/fleet.json")
    _TOKEN = getattr(cli, "token", None)
    cli.enroll("alice", "code", b"secret", max_attempts=5)
    cl.wait_healthy(timeout=10)
    _, ke1 = opaque.ClientLogin.start(b"guess", ksf=cli.fleet.ksf, context=cli.fleet.context)
    enroll = _valid_enroll(cli, b"bob")
    before = settled_commit_index(cl)
    watch = LogWatch(cl, nid)
    for name, raw, want in _cases(ke1, enroll):
        status, headers, body = exchange(cl, url, raw)
        assert status == want, (name, status, body[:200])
        assert headers.get("content-type", "").startswith("application/msgpack"), (name, headers)
        assert int(headers["vault-time"]) > 0, name
        out = error_map(body)
        assert out["error"] == {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                                413: "too_large", 415: "unsupported_media_type",
                                417: "expectation_failed"}[want], (name, out)
        if want == 405:
            assert headers.get("allow"), (name, headers)
            assert "GET" in headers["allow"] if name == "delete status" \
                else headers["allow"] == "POST", headers
    assert settled_commit_index(cl) == before  # nothing was proposed
    time.sleep(0.5)  # the node logs after it replies: let the last lines reach the file
    lines = watch.lines()
    assert not watch.tracebacks(), "\n".join(lines)
    assert len(lines) <= 12, "\n".join(lines)  # rate-limited: a few lines per kind
    with pytest.raises(C.WrongCode) as exc:  # nothing was counted
        cli.recover("alice", "wrong")
    assert exc.value.attempts_left == 4
    status, out = cli.post("/v1/enroll/finish", dict(enroll, max_attempts=3))
    assert status == 201 and out["max_attempts"] == 3  # the ticket was never used


def test_a_client_leaving_mid_body_is_no_error(cl):
    nid = cl.ids[0]
    watch = LogWatch(cl, nid)
    for _ in range(20):
        sock = connect(cl, cl.api[nid])
        sock.sendall(request("POST", "/v1/recover/start", b"\x82\xa4user",
                             headers={"Content-Length": "100"}))
        time.sleep(0.02)
        sock.close()
    time.sleep(0.5)  # the node notices the closes in the background; errors would show after
    st, headers, body = exchange(cl, cl.api[nid], request("GET", "/v1/status", ctype=None))
    assert st == 200
    lines = watch.lines()
    assert not watch.tracebacks(), "\n".join(lines)
    assert not [ln for ln in lines if "ERROR" in ln or "internal" in ln], "\n".join(lines)


def test_slow_headers_and_bodies_are_cut_off(cl):
    nid = cl.ids[0]
    url = cl.api[nid]
    watch = LogWatch(cl, nid)
    # a body that never completes: 408, then the connection is closed
    sock = connect(cl, url)
    sock.sendall(request("POST", "/v1/recover/start", b"\x82", headers={"Content-Length": "50"}))
    t0 = time.monotonic()
    status, headers, body = read_reply(sock, timeout=5)
    assert status == 408 and error_map(body)["error"] == "request_timeout"
    assert 0.8 < time.monotonic() - t0 < 3
    assert sock.recv(10) == b""
    sock.close()
    # headers one byte at a time: closed after the header timeout
    sock = connect(cl, url)
    t0 = time.monotonic()
    closed = None
    for b in b"POST /v1/recover/start HTTP/1.1\r\nHost: x\r\n":
        try:
            sock.sendall(bytes([b]))
        except OSError:
            closed = time.monotonic() - t0
            break
        sock.settimeout(0.25)
        try:
            if sock.recv(10) == b"":
                closed = time.monotonic() - t0
                break
        except TimeoutError:
            pass
        except OSError:
            closed = time.monotonic() - t0
            break
    sock.close()
    assert closed is not None and closed < 3, closed
    # an idle TLS connection, and a TCP connection that never starts TLS
    tls, tcp = connect(cl, url), socket.create_connection(connect_addr(url))
    for s, limit in ((tcp, 1), (tls, 2)):
        s.settimeout(5)
        t0 = time.monotonic()
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < limit + 1.5
        s.close()
    lines = watch.lines()
    assert not watch.tracebacks(), "\n".join(lines)
    assert len(lines) <= 6, "\n".join(lines)


def connect_addr(url):
    from hostile import host_port
    return host_port(url)


def test_admin_transfer_to_must_be_a_node_id(cl):
    leader = cl.leader()
    watch = LogWatch(cl, leader)
    for to in (["n2"], {"n2": 1}, 5, True, b"n2", "nope", leader):
        status, out = cl.admin(leader, "transfer", {"to": to})
        assert status == 400, (to, status, out)
        assert out["error"] == "bad_request"
    assert not watch.tracebacks(), "\n".join(watch.lines())
    status, out = cl.admin(leader, "status", {})
    assert status == 200 and out["api"]["open"] >= 1
    assert out["open_files"]["soft"] >= out["open_files"]["soft_at_start"]
    status, out = cl.admin(leader, "compact", {})
    assert status == 200 and out == {"compacting": True}
