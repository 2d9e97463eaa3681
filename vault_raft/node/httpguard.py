"""Connection hygiene for a node's API port: a connection cap, timeouts, quiet logs.

The API is served by aiohttp, but not through ``web.TCPSite``: a node listens
on plain TCP and does the TLS handshake itself (``loop.start_tls``), so that
every accepted connection is accounted for from its first moment, before the
handshake, and can be closed at any time:

- **A connection cap** (:attr:`Limits.max_connections`, 1024 by default,
  lowered to fit the open-file limit: :mod:`vault_raft.node.limits`).  A
  connection accepted at the cap closes the least recently active connection
  that is not processing a request (one still in its TLS handshake, idle
  between requests, or still sending its request); if every connection is
  processing one, the new connection is closed instead.
- **Timeouts**: the TLS handshake (:attr:`Limits.handshake_timeout`), the
  request headers from their first byte (:attr:`Limits.header_timeout`), the
  body (:attr:`Limits.body_timeout`, answered 408) and an idle connection
  between requests, from its handshake or its last reply
  (:attr:`Limits.idle_timeout`).
- **Errors.**  Every refusal is the protocol's msgpack error map with a 4xx,
  aiohttp's own parse errors included (:meth:`_Handler.handle_error`); the
  map and the clock header are :mod:`vault_raft.node.replies`.
- **Logs.**  A client's error is one line, never a traceback, and every kind
  of line is rate-limited (:class:`QuietLog`): a flood of bad requests costs
  a few lines.

Why one module: the listener, its connection protocol and aiohttp's
request handler share private state (a connection's phase, the
server's accounting) and are read together.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from vault_raft.logs import QuietLog
from vault_raft.node.limits import Limits, connection_cap
from vault_raft.node.replies import error_response, one_line
from vault_raft.node.validate import ApiError


@web.middleware
async def track(request: web.Request, handler):
    """Outermost middleware: tells the connection a request is being served
    (it is not evicted, and its header timer stops)."""
    proto = request.protocol
    if isinstance(proto, _Handler):
        proto.request_started(reading=request.method not in ("GET", "HEAD"))
        try:
            return await handler(request)
        finally:
            proto.request_finished()
    return await handler(request)


async def read_body(request: web.Request) -> bytes:
    """The request's body, read within the body timeout.  Whatever goes wrong
    on the client's side is an ApiError (4xx, the connection then closed):
    a body that does not arrive in time (408), one that does not decode
    (a corrupt gzip or deflate stream, broken chunks), a client gone mid-body.
    Too large a body is aiohttp's 413."""
    proto = request.protocol
    handler = proto if isinstance(proto, _Handler) else None
    timeout = handler.srv.limits.body_timeout if handler is not None else Limits.body_timeout
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        if handler is not None:
            handler.srv.note_body_timeout(handler.conn.peer)
        # no lingering for the rest of a body that is not coming: the reply,
        # then the connection is closed
        request.content.set_exception(TimeoutError())
        raise ApiError(408, f"request body not received within {timeout:g} s",
                       close=True) from None
    except (RequestPayloadError, HttpProcessingError) as exc:
        if handler is not None:
            handler.srv._note("bad_requests")
            handler.srv.quiet.info("malformed", "API: refused a request body from %s: %s",
                                   handler.conn.peer, one_line(exc))
        raise ApiError(400, f"request body could not be read: {one_line(exc)}",
                       close=True) from None
    except ConnectionError:  # the client left mid-body: nobody to answer
        if handler is not None:
            handler.srv._note("client_gone")
        raise ApiError(400, "connection closed before the request body was complete",
                       close=True) from None
    if handler is not None:
        handler.body_done()
    return raw


# -------------------------------------------------------------- connections

_HANDSHAKE, _IDLE, _READING, _BUSY, _CLOSED = "handshake", "idle", "reading", "busy", "closed"


class _Conn(asyncio.Protocol):
    """One accepted TCP connection: TLS handshake, then an aiohttp handler."""

    #: bytes that may arrive between the end of the handshake and the handler
    #: (one read of the TLS layer: asyncio reads up to 256 KiB at a time)
    MAX_EARLY = 512 * 1024

    def __init__(self, server: ApiServer):
        assert server.loop is not None, "connections arrive once the server has started"
        self.srv = server
        self.loop: asyncio.AbstractEventLoop = server.loop
        self.raw: asyncio.Transport | None = None
        self.handler: _Handler | None = None
        self.state = _HANDSHAKE
        self.peer = "?"
        self.opened = 0.0
        self._early: list[bytes] = []
        self._early_len = 0
        self._eof = False
        self._task: asyncio.Task | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.raw = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.opened = self.loop.time()
        if not self.srv._admit(self):
            self.state = _CLOSED
            transport.abort()
            return
        if self.srv.ssl is None:
            self._attach(transport)
        else:
            self._task = self.loop.create_task(self._handshake(transport, self.srv.ssl))

    async def _handshake(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        lim = self.srv.limits
        try:
            tls = await self.loop.start_tls(
                raw, self, ctx, server_side=True,
                ssl_handshake_timeout=lim.handshake_timeout,
                ssl_shutdown_timeout=lim.tls_close_timeout)
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception as exc:  # noqa: BLE001 -- any failure ends this connection only
            if self.state == _CLOSED:  # closed meanwhile (evicted, or the node stopping)
                return
            late = self.loop.time() - self.opened >= lim.handshake_timeout - 0.05
            self.srv._note("handshake_timeouts" if late else "handshake_failures")
            self.srv.quiet.debug("tls", "API: TLS handshake with %s %s: %s", self.peer,
                                 "timed out" if late else "failed", one_line(exc))
            self.abort()
            return
        if self.state == _CLOSED or tls is None:
            return
        self._attach(tls)

    def _attach(self, transport) -> None:
        self.state = _IDLE
        self.handler = self.srv._make_handler(self)
        self.handler.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.handler.data_received(data)
        if self._eof:
            self.handler.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)
        elif self.state != _CLOSED:
            self._early_len += len(data)
            if self._early_len > self.MAX_EARLY:
                self.abort()
            else:
                self._early.append(data)

    def eof_received(self):
        if self.handler is not None:
            return self.handler.eof_received()
        self._eof = True
        return None

    def connection_lost(self, exc) -> None:
        self.state = _CLOSED
        self.srv._forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    # -- ours
    def abort(self) -> None:
        """Close now: no TLS close_notify, no waiting for the client."""
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self.srv._forget(self)
        if self.raw is not None:
            self.raw.abort()

    @property
    def evictable(self) -> bool:
        return self.state in (_HANDSHAKE, _IDLE, _READING)


class _Handler(RequestHandler):
    """aiohttp's request handler with the node's error replies, quiet logs,
    a header timer and a bounded close."""

    def __init__(self, manager, conn: _Conn, **kwargs):
        super().__init__(manager, **kwargs)
        self.conn = conn
        self.srv = conn.srv
        self.active = 0
        self._header_timer: asyncio.TimerHandle | None = None

    # -- the header timer: from the first byte of a request to its handler
    def data_received(self, data: bytes) -> None:
        if data and self.active == 0 and self._header_timer is None:
            self._header_timer = self._loop.call_later(self.srv.limits.header_timeout,
                                                       self._header_late)
        super().data_received(data)

    def _header_late(self) -> None:
        self._header_timer = None
        if self.active == 0 and self.conn.state != _CLOSED:
            self.srv._note("header_timeouts")
            self.srv.quiet.info("slow", "API: closed a connection from %s: request headers "
                                "not received within %.0f s", self.conn.peer,
                                self.srv.limits.header_timeout)
            self.conn.abort()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def request_started(self, reading: bool) -> None:
        self._stop_header_timer()
        self.active += 1
        if self.conn.state != _CLOSED:
            self.conn.state = _READING if reading else _BUSY
        self.srv._note("requests")

    def body_done(self) -> None:
        if self.conn.state != _CLOSED:
            self.conn.state = _BUSY

    def request_finished(self) -> None:
        self.active -= 1
        if self.active == 0 and self.conn.state != _CLOSED:
            self.conn.state = _IDLE
            self.srv._touch(self.conn)

    def connection_lost(self, exc) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def force_close(self) -> None:
        """aiohttp closes a connection (idle past the keep-alive timeout, or
        failed): its TLS close lets the client read what was sent (an abort
        with unread data would reset the connection and lose the reply);
        it is bounded by the TLS close timeout, and the file is freed at the
        latest just after it."""
        super().force_close()
        if self.conn.state != _CLOSED:
            self._loop.call_later(self.srv.limits.tls_close_timeout + 0.5, self.conn.abort)

    # -- errors aiohttp answers itself (bad request line, headers, framing)
    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        client = isinstance(exc, (HttpProcessingError, RequestPayloadError, ConnectionError,
                                  asyncio.TimeoutError)) or 400 <= status < 500
        if client:
            if not 400 <= status < 500:
                status = 400
            text = one_line(exc or message) or "malformed request"
            self.srv._note("bad_requests")
            self.srv.quiet.info("malformed", "API: refused a malformed request from %s: %s",
                                self.conn.peer, text)
        else:  # a bug of ours: the detail stays in the log
            text = "internal error"
            self.srv.quiet.log(logging.ERROR, "internal", "API: internal error handling a "
                               "request from %s", self.conn.peer, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response "
                                  "with the error message")
        resp = error_response(status, text)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, (HttpProcessingError, RequestPayloadError, ConnectionError,
                            asyncio.TimeoutError)):
            self.srv.quiet.debug("client-gone", "API: %s: %s", one_line(str(args[0]) if args
                                                                        else ""), one_line(exc))
            return
        self.srv.quiet.log(logging.ERROR, "internal", *(args or ("API: error",)),
                           exc_info=exc if exc is not None else True)


# ------------------------------------------------------------------ server

class _Runner(web.AppRunner):
    async def _make_server(self):
        server = await super()._make_server()
        self.made = server
        return server


class ApiServer:
    """The node's API listener: ``await start(host, port)``, ``await stop()``,
    ``stats()`` for the admin status."""

    def __init__(self, app: web.Application, *, limits: Limits | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 logger: logging.Logger | None = None, nofile: dict | None = None):
        self.limits = limits or Limits()
        self.ssl = ssl_context
        self.log = logger or logging.getLogger("vault_raft.node.httpguard")
        # one line a minute about a flood (the admin status counts everything)
        self.quiet = QuietLog(self.log, bursts={"cap": 1, "slow": 1})
        self.nofile = nofile or {}
        soft = self.nofile.get("soft") or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = connection_cap(self.limits, soft)
        lim = self.limits
        self._runner = _Runner(app, access_log=None, keepalive_timeout=lim.idle_timeout,
                               max_line_size=lim.max_line, max_field_size=lim.max_line,
                               max_headers=lim.max_headers, lingering_time=2.0)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[_Conn, None] = {}  # least recently active first
        self._counts = {k: 0 for k in ("accepted", "requests", "evicted", "refused_at_cap",
                                       "handshake_failures", "handshake_timeouts",
                                       "header_timeouts", "body_timeouts", "bad_requests",
                                       "client_gone")}
        self.peak = 0

    async def start(self, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        quiet_loop_errors(self.loop, self.quiet)
        await self._runner.setup()
        self._server = await self.loop.create_server(lambda: _Conn(self), host, port,
                                                     reuse_address=True, backlog=128)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.handler is None:
                conn.abort()
        await self._runner.cleanup()
        for conn in list(self._conns):
            conn.abort()

    def _make_handler(self, conn: _Conn) -> _Handler:
        server = self._runner.made
        return _Handler(server, conn, loop=self.loop, **server._kwargs)

    # -- accounting
    def _admit(self, conn: _Conn) -> bool:
        self._counts["accepted"] += 1
        if len(self._conns) >= self.max_connections:
            victim = next((c for c in self._conns if c.evictable), None)
            if victim is None:
                self._counts["refused_at_cap"] += 1
                self.quiet.warning("cap", "API: %d connections open, every one processing a "
                                   "request: refused a new one from %s", len(self._conns),
                                   conn.peer)
                return False
            self._counts["evicted"] += 1
            self.quiet.warning("cap", "API: connection cap (%d) reached: closing the least "
                               "recently active idle connections to admit new ones",
                               self.max_connections)
            victim.abort()
        self._conns[conn] = None
        self.peak = max(self.peak, len(self._conns))
        return True

    def _forget(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)

    def _touch(self, conn: _Conn) -> None:
        if conn in self._conns:
            del self._conns[conn]
            self._conns[conn] = None

    def _note(self, what: str) -> None:
        self._counts[what] += 1

    def note_body_timeout(self, peer: str) -> None:
        self._note("body_timeouts")
        self.quiet.info("slow", "API: closed a connection from %s: request body not received "
                                "within %.0f s", peer, self.limits.body_timeout)

    def stats(self) -> dict:
        states: dict[str, int] = {}
        for c in self._conns:
            states[c.state] = states.get(c.state, 0) + 1
        return {"open": len(self._conns), "peak": self.peak, "by_state": states,
                "max_connections": self.max_connections, **self._counts,
                "log_lines_suppressed": self.quiet.suppressed}


def peer_of(request: web.Request) -> str:
    proto = request.protocol
    return proto.conn.peer if isinstance(proto, _Handler) else str(request.remote)


# ------------------------------------------------------------ event loop

_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def quiet_loop_errors(loop: asyncio.AbstractEventLoop, quiet: QuietLog) -> None:
    """asyncio's own error reports (an accept out of file descriptors, a
    transport failing) as rate-limited single lines; asyncio already waits a
    second before accepting again after EMFILE."""
    def handler(loop, context):
        exc = context.get("exception")
        msg = context.get("message", "event loop error")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
            quiet.warning("accept", "API: %s: %s (accepting again in 1 s)", msg, one_line(exc))
        elif isinstance(exc, (ConnectionError, ssl.SSLError, asyncio.TimeoutError)):
            quiet.debug("loop-client", "API: %s: %s", msg, one_line(exc))
        else:
            quiet.log(logging.ERROR, "loop", "event loop: %s", msg,
                      exc_info=exc if exc is not None else None)
    loop.set_exception_handler(handler)
