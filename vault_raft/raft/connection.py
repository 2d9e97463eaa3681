"""One mutual-TLS connection of the Raft transport, on pysyncobj's poller.

The standard library's ``ssl`` is driven through memory BIOs: the poller says
when the socket is readable or writable, and the connection moves bytes
between the socket and the TLS object, with no extra thread and no blocking
call.  Received frames are length-checked before they are buffered and
decoded by :mod:`.frames`; the transport (:mod:`.transport`) identifies the
peer at the end of the handshake and gets each message.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl

from pysyncobj.monotonic import monotonic as monotonicTime
from pysyncobj.poller import POLL_EVENT_TYPE

from vault_raft.raft import frames as wire

log = logging.getLogger("vault_raft.tls")

CONNECTING, HANDSHAKE, OPEN, CLOSED = range(4)
READ = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
RW = READ | POLL_EVENT_TYPE.WRITE


class TlsConnection:
    """One TLS connection on pysyncobj's poller (memory-BIO TLS), owned by
    ``transport`` (the :class:`~vault_raft.raft.transport.MtlsTransport`, which
    this module does not import: it identifies peers and gets messages)."""

    def __init__(self, transport, sock: socket.socket, server_side: bool,
                 node=None, connecting: bool = False, peer: str = "?"):
        self.t = transport
        self.sock = sock
        self.fd = sock.fileno()
        self.server_side = server_side
        self.peer = peer  # the address it came from (accepted connections)
        self.node = node  # expected peer (outgoing) / identified peer (incoming)
        self.peer_der: bytes | None = None  # its certificate, once identified
        self.inbio, self.outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = transport.server_ctx if server_side else transport.client_ctx
        self.tls = ctx.wrap_bio(self.inbio, self.outbio, server_side=server_side)
        self.state = CONNECTING if connecting else HANDSHAKE
        self.rx = bytearray()
        self.tx = bytearray()
        self.started = self.last_read = self.last_sent = monotonicTime()
        transport.poller.subscribe(self.fd, self._on_event, RW if connecting else READ)
        if not connecting and not server_side:
            self._handshake()

    # ------------------------------------------------------------- events
    def _on_event(self, descr, event):
        if descr != self.fd or self.state == CLOSED:
            return
        if event & POLL_EVENT_TYPE.ERROR and not event & POLL_EVENT_TYPE.READ:
            return self.close("socket error")  # (with data to read: read it first, an alert)
        if self.state == CONNECTING:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self.close(f"connect failed: {os.strerror(err)}")
            self.state = HANDSHAKE
            self._handshake()
            if self.state == CLOSED:
                return
        if event & POLL_EVENT_TYPE.READ:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                return self.close(f"recv: {exc}")
            if data == b"":
                return self.close("closed by peer")
            if data:
                self.last_read = monotonicTime()
                self.inbio.write(data)
                if self.state == HANDSHAKE:
                    self._handshake()
                if self.state == OPEN:
                    self._read_frames()
        if self.state != CLOSED:
            self._flush()

    def _handshake(self):
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            return self.close(f"TLS handshake failed: {exc}")
        der = self.tls.getpeercert(binary_form=True)
        try:
            node = self.t._identify(der, self.node)
        except ValueError as exc:
            self._flush()
            return self.close(f"peer refused: {exc}")
        self.node, self.peer_der = node, der  # checked again after membership changes
        self.state = OPEN
        self._flush()
        self.t._on_open(self)
        if self.state == OPEN:
            self._read_frames()  # application data that came with the handshake

    def _read_frames(self):
        while self.state == OPEN:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                return self.close("TLS closed by peer")
            except ssl.SSLError as exc:
                return self.close(f"TLS error: {exc}")
            if not chunk:
                return self.close("TLS closed by peer")
            self.rx += chunk
            while len(self.rx) >= 4:
                try:
                    n = wire.frame_length(bytes(self.rx[:4]))
                except wire.FrameError as exc:  # checked before the body is buffered
                    return self.close(f"dropped: {exc}")
                if len(self.rx) < 4 + n:
                    break
                body = bytes(self.rx[4:4 + n])
                del self.rx[:4 + n]
                try:
                    msg = wire.decode(body)
                except wire.FrameError as exc:
                    return self.close(f"dropped: {exc}")
                if msg["type"] != "_ping":
                    self.t._deliver(self, msg)
                if self.state != OPEN:
                    return

    # ------------------------------------------------------------ sending
    def send(self, frame: bytes) -> bool:
        if self.state != OPEN:
            return False
        try:
            self.tls.write(frame)
        except ssl.SSLError as exc:
            self.close(f"TLS write: {exc}")
            return False
        self.last_sent = monotonicTime()
        self._flush()
        return self.state == OPEN

    def _flush(self):
        pending = self.outbio.read()
        if pending:
            self.tx += pending
        if self.tx and self.state != CONNECTING:
            try:
                sent = self.sock.send(self.tx)
                del self.tx[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                return self.close(f"send: {exc}")
            if len(self.tx) > self.t.max_backlog:
                return self.close("peer too slow: send backlog over the limit")
        if self.state != CLOSED:
            self.t.poller.subscribe(self.fd, self._on_event,
                                    RW if (self.tx or self.state == CONNECTING) else READ)

    def close(self, why: str = "") -> None:
        if self.state == CLOSED:
            return
        was_open = self.state == OPEN
        self.state = CLOSED
        try:
            self.t.poller.unsubscribe(self.fd)
        except Exception:  # noqa: BLE001 -- already gone from the poller
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        if why:
            if self.server_side and not was_open:
                self.t._refused(self, why)
            elif why.startswith("peer refused"):  # we dialled a node: someone else answered
                self.t._quiet.warning("dialled", "Raft port: dialled %s: %s",
                                      getattr(self.node, "id", "?"), why)
            elif why.startswith("dropped"):  # an authenticated peer sent a bad frame
                self.t._quiet.warning("dropped", "Raft port: connection %s (%s) closed: %s",
                                      getattr(self.node, "id", "?"), self.peer, why)
            else:
                (log.info if was_open else log.debug)("connection %s closed: %s",
                                                       getattr(self.node, "id", "?"), why)
        self.t._on_closed(self, was_open)
