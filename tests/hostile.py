"""Helpers for tests that talk to a node the way a hostile client would:
raw bytes over the pinned TLS channel, replies parsed by hand."""
from __future__ import annotations

import json
import os
import select
import socket
import ssl
import time
import urllib.parse

import msgpack

from vault_raft.ops.cluster import ClusterError, wait_until


def set_limits(fleet_dir: str, **limits) -> None:
    """Write node.json ``limits`` for every node of a fleet (before it starts)."""
    for name in sorted(os.listdir(fleet_dir)):
        p = os.path.join(fleet_dir, name, "node.json")
        if os.path.exists(p):
            cfg = json.loads(open(p).read())
            cfg["limits"] = dict(cfg.get("limits", {}), **limits)
            open(p, "w").write(json.dumps(cfg))


def host_port(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    assert u.hostname is not None and u.port is not None, url
    return u.hostname, u.port


def connect(cl, url: str, timeout: float = 5.0):
    """A TLS socket to a node, pinned to the fleet CA (plain TCP for http://)."""
    host, port = host_port(url)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client does
    if url.startswith("https://"):
        return cl.channel.wrap(sock, host)
    return sock


def read_reply(sock, timeout: float = 5.0, head_only: bool = False,
               ) -> tuple[int, dict, bytes]:
    """(status, headers lower-cased, body) of one HTTP/1.1 reply (interim 1xx
    replies skipped; ``head_only``: the reply to a HEAD, which has no body)."""
    sock.settimeout(timeout)
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a full reply: {buf[:200]!r}")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status >= 200:
            break
        buf = rest
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = 0 if head_only else int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:n]


def _parse_reply(buf: bytes, head_only: bool):
    """(status, headers, body) if ``buf`` holds a whole final reply, else None."""
    while b"\r\n\r\n" in buf:
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status < 200:  # interim (100 Continue)
            buf = rest
            continue
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if head_only else int(headers.get("content-length", "0"))
        return (status, headers, rest[:n]) if len(rest) >= n else None
    return None


def exchange(cl, url: str, raw: bytes, timeout: float = 5.0,
             head_only: bool = False) -> tuple[int, dict, bytes]:
    """Send ``raw`` and read the reply at the same time, as a careful client
    does: a node may answer (and close) before it has read a large body."""
    sock = connect(cl, url, timeout)
    sock.setblocking(False)
    out, buf = memoryview(raw), b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            got = _parse_reply(buf, head_only)
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no full reply in {timeout} s: {buf[:200]!r}")
            pending = hasattr(sock, "pending") and sock.pending()
            if not pending:
                r, w, _ = select.select([sock], [sock] if len(out) else [], [], left)
            else:
                r, w = [sock], []
            if r:
                try:
                    data = sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    data = None
                if data == b"":
                    raise ConnectionError(f"closed before a full reply: {buf[:200]!r}")
                if data:
                    buf += data
            if w and len(out):
                try:
                    n = sock.send(out[:16384])
                    out = out[n:]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    out = memoryview(b"")  # the node stopped reading: it may have answered
    finally:
        sock.close()


def request(method: str, path: str, body: bytes = b"", headers: dict | None = None,
            ctype: str | None = "application/msgpack") -> bytes:
    h = {"Host": "node", "Connection": "close"}
    if ctype:
        h["Content-Type"] = ctype
    if body or method in ("POST", "PUT"):
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_map(body: bytes) -> dict:
    out = msgpack.unpackb(body, raw=False)
    assert isinstance(out, dict) and isinstance(out.get("error"), str) \
        and isinstance(out.get("message"), str), out
    assert "Traceback" not in out["message"]
    return out


class LogWatch:
    """Lines a node wrote to its log since this object was made."""

    def __init__(self, cl, nid: str):
        self.path = os.path.join(cl.node_dir(nid), "node.log")
        self.start = os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def lines(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", "replace").splitlines()

    def tracebacks(self) -> list[str]:
        return [ln for ln in self.lines() if "Traceback" in ln]


def commit_index(cl, nid: str) -> int:
    st = cl.status(nid, timeout=5.0)
    assert st is not None and "commit_index" in st, st
    return st["commit_index"]


def settled_commit_index(cl, timeout: float = 10.0) -> int:
    """The fleet's commit index once every node reports the same one twice in
    a row (a follower learns the index with the leader's next message)."""
    seen: list[dict] = []

    def settled():
        seen.append({n: commit_index(cl, n) for n in cl.ids})
        last, now = seen[-2:] if len(seen) > 1 else (None, seen[-1])
        return len(set(now.values())) == 1 and now == last and (next(iter(now.values())),)

    try:  # (a one-tuple: an index of 0 is an answer too)
        return wait_until(settled, timeout, 0.2, what="one commit index on every node")[0]
    except ClusterError:
        raise AssertionError(f"commit indexes not settled: {seen[-2:]}") from None
