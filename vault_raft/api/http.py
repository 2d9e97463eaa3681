"""The one HTTP client of the package: msgpack over HTTP(S), blocking.

:func:`call` is one request on a new connection (the client, the operator's
tools, the chaos campaign's actors, the witness monitor and the supervisor);
:class:`Connection` is a kept-alive connection for many (the bench's load
generators).  The servers use aiohttp.

Node APIs are ``https://`` and need the fleet's :class:`~vault_raft.api.channel.Channel`
(TLS 1.3, the server pinned to the fleet CA); ``http://`` is for the witness
and for fleets made with ``fleet init --insecure-http``."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse

from vault_raft.api import binding as P
from vault_raft.api.channel import Channel, ChannelError, connection
from vault_raft.errors import VaultRaftError

TIME_HEADER = P.TIME_HEADER

_clocks: dict[str, float] = {}  # url -> the node's clock minus ours, in ms
_clocks_lock = threading.Lock()


_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


class WireError(VaultRaftError):
    """The peer answered with something that is not a msgpack map (``status``:
    the reply's HTTP status; None for a malformed URL)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def clock_offset(url: str) -> float | None:
    """How far the node at ``url`` is ahead of this machine's clock (ms), as
    last seen in one of its replies; None before any reply."""
    with _clocks_lock:
        return _clocks.get(url)


def node_time_ms(url: str) -> int | None:
    """Now, in the clock of the node at ``url`` (None if not learned yet)."""
    off = clock_offset(url)
    return None if off is None else int(time.time() * 1000 + off)


def _learn_clock(url: str, header: str | None, sent: float, received: float) -> None:
    """The reply was stamped between ``sent`` and ``received`` (our clock, s):
    take the midpoint (the error is at most half the round trip)."""
    if header is None:
        return
    try:
        node_ms = int(header)
    except ValueError:
        return
    with _clocks_lock:
        _clocks[url] = node_ms - (sent + received) / 2 * 1000


def call(url: str, method: str, path: str, body: dict | None = None,
         timeout: float = 5.0, channel: Channel | None = None) -> tuple[int, dict]:
    """``method path`` on ``url``; returns (HTTP status, decoded map).

    An ``https`` URL is reached through ``channel`` (required): nothing is sent
    unless the server proves it is the pinned fleet's, else
    :class:`~vault_raft.api.channel.ChannelRefused` (a ConnectionError).
    Raises OSError / http.client.HTTPException for transport failures and
    :class:`WireError` for a malformed answer or URL.  A failure to connect
    (TCP or the TLS handshake, before any request byte) is a
    :class:`~vault_raft.api.channel.ChannelError`: nothing was sent.  Any other
    transport failure happened after the request may have been sent.

    A reply's ``Vault-Time`` header teaches :func:`clock_offset` the node's
    clock (over a pinned channel, or plain HTTP: never from an unauthenticated
    TLS peer)."""
    try:
        conn = connection(url, timeout, channel)
    except ValueError as exc:
        raise WireError(str(exc)) from None
    try:
        try:
            conn.connect()
        except ChannelError:
            raise
        except OSError as exc:
            raise ChannelError(f"{url}: cannot connect: {exc.__class__.__name__}: {exc}") \
                from None
        sent = time.time()
        if body is None:
            conn.request(method, path)
        else:
            conn.request(method, path, body=P.pack(body),
                         headers={"Content-Type": P.CONTENT_TYPE})
        resp = conn.getresponse()
        data = resp.read()
        if channel is None or channel.pinned:  # only a node that proved it is the fleet's
            _learn_clock(url, resp.getheader(TIME_HEADER), sent, time.time())
    finally:
        conn.close()
    try:
        out = P.unpack(data)
    except Exception:
        out = None
    if not isinstance(out, dict):
        raise WireError(f"{url}{path}: HTTP {resp.status} with a malformed body", resp.status)
    return resp.status, out


# ------------------------------------------------------- kept-alive connection

class HttpError(VaultRaftError, OSError):
    """A malformed or unexpected answer on the wire (the connection is dropped)."""


class Connection:
    """A kept-alive HTTP/1.1 connection to one server (reconnects on failure).

    Its own cost per request is small: ``http.client`` parses every
    response's headers with the ``email`` package (about 220 us of CPU per
    request, a tenth of a guess); this writes the request line and headers
    itself and reads only what it needs from the answer (status,
    Content-Length or chunked framing, Connection), over one socket.  The
    bench's load generators use it (it shares the machine with the systems it
    measures), for the vault, raw pysyncobj and etcd alike.  ``https://`` URLs
    go through a :class:`~vault_raft.api.channel.Channel` (TLS 1.3, the server
    pinned to its fleet's CA, checked before the first request byte), as
    :func:`call` connects."""

    def __init__(self, url: str, timeout: float = 10.0, channel: Channel | None = None,
                 reuse: bool = True, token=None):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname or not u.port:
            raise ValueError(f"need an http(s)://host:port URL, got {url!r}")
        if u.scheme == "https" and channel is None:
            raise ValueError(f"{url}: an https URL needs the fleet's pinned channel")
        self.channel = channel if u.scheme == "https" else None
        self.reuse = reuse  # False: a new connection (and handshake) per request
        self.token = token  # user -> tenant token, added to every body naming a user
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self._host_header = f"{self.host}:{self.port}".encode()
        self.sock: socket.socket | None = None
        self._buf = bytearray()

    # ------------------------------------------------------------ wire
    def _connect(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf.clear()
        return s if self.channel is None else self.channel.wrap(s, self.host)

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise HttpError("connection closed by the server")
        self._buf += data

    def _read_until(self, sep: bytes, limit: int) -> bytes:
        while True:
            i = self._buf.find(sep)
            if i >= 0:
                out = bytes(self._buf[:i])
                del self._buf[:i + len(sep)]
                return out
            if len(self._buf) > limit:
                raise HttpError("header too long")
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_response(self) -> tuple[int, bytes, bool]:
        head = self._read_until(b"\r\n\r\n", _MAX_HEAD).split(b"\r\n")
        parts = head[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP/1.x status line: {head[0][:60]!r}")
        status = int(parts[1])
        length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            body = bytearray()
            while True:
                size = int(self._read_until(b"\r\n", 1024).split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n", _MAX_HEAD)  # (no trailers expected)
                    break
                if len(body) + size > _MAX_BODY:
                    raise HttpError("body too long")
                body += self._read_exact(size)
                self._read_exact(2)
            return status, bytes(body), close
        if length is None:
            raise HttpError("answer without Content-Length or chunked framing")
        if length > _MAX_BODY:
            raise HttpError("body too long")
        return status, self._read_exact(length), close

    def _request(self, method: str, path: str, body: bytes | None, ctype: str) -> tuple[int, bytes]:
        req = [method.encode(), b" ", path.encode(), b" HTTP/1.1\r\nHost: ", self._host_header,
               b"\r\n"]
        if body is not None:
            req += [b"Content-Type: ", ctype.encode(), b"\r\nContent-Length: ",
                    str(len(body)).encode(), b"\r\n\r\n", body]
        else:
            req.append(b"\r\n")
        data = b"".join(req)
        for attempt in (0, 1):
            fresh = self.sock is None
            try:
                if self.sock is None:
                    self.sock = self._connect()
                self.sock.sendall(data)
                status, out, close = self._read_response()
                if close or not self.reuse:
                    self.close()
                return status, out
            except (OSError, ValueError):
                self.close()
                # a kept-alive connection the server closed in between: retry once on a new one
                if attempt or fresh:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- API
    def post(self, path: str, obj: dict) -> tuple[int, dict]:
        if self.token is not None and "user" in obj:
            obj = dict(obj, auth=self.token(obj["user"]))
        st, data = self._request("POST", path, P.pack(obj), P.CONTENT_TYPE)
        try:
            return st, P.unpack(data)
        except Exception:
            return st, {}

    def post_json(self, path: str, obj: dict) -> tuple[int, bytes]:
        return self._request("POST", path, json.dumps(obj).encode(), "application/json")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self._buf.clear()
