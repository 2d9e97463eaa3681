"""Mutual TLS 1.3 between fleet nodes: a pysyncobj transport that identifies
peers by certificate.

**PKI.**  The fleet CA and node certificates live in :mod:`.pki`.

**Transport.** :class:`MtlsTransport` replaces pysyncobj's TCP transport
(pysyncobj accepts a transport class). It runs on pysyncobj's own poller and
tick thread; each connection (:mod:`.connection`) drives the standard
library's ``ssl`` through memory BIOs (no extra threads, no blocking). Both
sides present certificates and require the peer's, chained to the fleet CA,
TLS 1.3 only. A peer *is* the node its certificate names: an accepted
connection is attributed to the node whose address the certificate's SAN holds
(which must match the fleet config for that node id), never to an address the
peer claims; an outgoing connection must reach a server whose certificate
names the node we dialled. Frames are :mod:`.frames` msgpack (length checked
before buffering, strict schema, no pickle on the wire, nothing received
unpickled). Which node id each member address has, and which certificates are
pinned or revoked, follow the membership entries in the log
(:mod:`.membership`). Readonly connections and utility commands do not exist
on this wire. Idle connections carry keepalive pings, so a silent (paused)
peer is dropped after ``connectionTimeout``, as with pysyncobj's transport.

**Hostile connections.**  Anyone can connect to the Raft port.  A connection
that has not completed the handshake and proved a fleet node's identity
within ``connectionTimeout`` is closed; at most :attr:`MtlsTransport.MAX_PENDING`
such connections are held (at the cap, the oldest is closed).  Refusals --
a failed handshake, a certificate that names no node of ours, a malformed
frame, a handshake that never completes -- are logged at WARNING with the
peer's address, at most three lines per kind per minute (the rest are
counted).  When ``accept`` fails for want of file descriptors (EMFILE,
ENFILE), the port stops accepting for a while (50 ms, doubling to 2 s)
instead of spinning.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from dataclasses import dataclass

from pysyncobj.monotonic import monotonic as monotonicTime
from pysyncobj.transport import Transport, TransportNotReadyError

from vault_raft.logs import QuietLog
from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft import frames as wire
from vault_raft.raft.connection import CONNECTING, OPEN, READ, TlsConnection
from vault_raft.raft.pki import peer_identity

log = logging.getLogger("vault_raft.tls")

_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class TlsConfig:
    """What a node's transport needs (paths from node.json)."""
    fleet_id: str
    node_id: str
    ca_file: str
    cert_file: str
    key_file: str
    peers: dict  # node id -> raft address, every node of the fleet

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        out = []
        for proto in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
            ctx = ssl.SSLContext(proto)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.check_hostname = False  # identity is checked against the fleet config
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca_file)
            ctx.load_cert_chain(self.cert_file, self.key_file)
            out.append(ctx)
        return out[0], out[1]


class MtlsTransport(Transport):
    """pysyncobj transport: mutual TLS 1.3, certificate identity, msgpack frames."""

    max_backlog = 8 << 20
    #: accepted connections not yet identified as a fleet node (at the cap the
    #: oldest is closed); a fleet has at most 8 other nodes
    MAX_PENDING = 32
    ACCEPT_BACKOFF = (0.05, 2.0)  # after EMFILE/ENFILE: first pause, longest pause

    def __init__(self, syncObj, selfNode, otherNodes):
        super().__init__(syncObj, selfNode, otherNodes)
        cfg: TlsConfig = syncObj._tls_config
        if selfNode is None:
            raise ValueError("read-only nodes do not exist on the mTLS transport")
        self._so = syncObj
        self.cfg = cfg
        self.poller = pso.poller(syncObj)
        self.server_ctx, self.client_ctx = cfg.contexts()
        self._self = selfNode
        self._nodes = {n.address: n for n in otherNodes}
        self._by_id = {nid: addr for nid, addr in cfg.peers.items()}
        if self._by_id.get(cfg.node_id) != selfNode.address:
            raise ValueError(f"TLS config names {cfg.node_id} at {self._by_id.get(cfg.node_id)},"
                             f" but this node is {selfNode.address}")
        self._conns: dict = {}  # node -> open TlsConnection
        self._pending: set = set()  # connections not yet identified / open
        self._last_attempt: dict = {}
        self._server: socket.socket | None = None
        self._ready = False
        self._bind_attempts = 0
        self._last_bind = 0.0
        self._quiet = QuietLog(log, bursts={"refused evicted": 1,
                                            "refused handshake timed out": 1})
        self._accept_pause = 0.0  # current backoff (0: accepting normally)
        self._accept_resume_at: float | None = None  # paused until (monotonic)
        self.counts = {k: 0 for k in ("accepted", "refused", "evicted", "accept_errors",
                                      "accept_pauses")}
        members = getattr(syncObj, "membership", None)  # raft.membership.Membership
        if members is not None:
            members.on_change = self._recheck_peers
        syncObj.addOnTickCallback(self._on_tick)
        self._bind()

    # -------------------------------------------------------------- ready
    @property
    def ready(self) -> bool:
        return self._ready

    def tryGetReady(self):
        self._bind()
        if not self._ready and self._so.conf.maxBindRetries and \
                self._bind_attempts >= self._so.conf.maxBindRetries:
            raise TransportNotReadyError

    def waitReady(self):
        if not self._ready:
            raise TransportNotReadyError

    def _bind(self):
        if self._ready or monotonicTime() < self._last_bind + self._so.conf.bindRetryTime:
            return
        self._last_bind = monotonicTime()
        host, port = (self._so.conf.bindAddress or self._self.address).rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
            s.listen(64)
        except OSError as exc:
            s.close()
            self._bind_attempts += 1
            log.warning("cannot bind the Raft port %s: %s", self._self.address, exc)
            return
        s.setblocking(False)
        self._server = s
        self.poller.subscribe(s.fileno(), self._on_accept, READ)
        self._ready = True

    # ---------------------------------------------------------- accepting
    def _on_accept(self, descr, event):
        while self._server is not None and self._accept_resume_at is None:
            try:
                sock, addr = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counts["accept_errors"] += 1
                if exc.errno in _RESOURCE_ERRNOS:
                    self._pause_accepting(exc)
                else:
                    self._quiet.warning("accept", "Raft port: accept failed: %s", exc)
                return
            self._accept_pause = 0.0
            self.counts["accepted"] += 1
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            self._make_room()
            self._pending.add(TlsConnection(self, sock, server_side=True, peer=peer))

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of file descriptors: the listening socket stays readable, so
        stop polling it for a while (doubling up to the longest pause)."""
        first, longest = self.ACCEPT_BACKOFF
        self._accept_pause = min(longest, self._accept_pause * 2 or first)
        self._accept_resume_at = monotonicTime() + self._accept_pause
        self.counts["accept_pauses"] += 1
        try:
            if self._server is not None:
                self.poller.unsubscribe(self._server.fileno())
        except Exception:  # noqa: BLE001 -- not subscribed
            pass
        self._quiet.warning("accept", "Raft port: cannot accept connections: %s; not "
                                      "accepting for %.2f s", os.strerror(exc.errno or 0),
                            self._accept_pause)

    def _resume_accepting(self) -> None:
        if self._accept_resume_at is None or monotonicTime() < self._accept_resume_at:
            return
        self._accept_resume_at = None
        if self._server is not None:
            self.poller.subscribe(self._server.fileno(), self._on_accept, READ)

    def _make_room(self) -> None:
        """At most MAX_PENDING unidentified accepted connections: close the oldest."""
        waiting = [c for c in self._pending if c.server_side]
        if len(waiting) < self.MAX_PENDING:
            return
        oldest = min(waiting, key=lambda c: c.started)
        self.counts["evicted"] += 1
        oldest.close("evicted: too many connections that have not identified themselves")

    def _refused(self, conn: TlsConnection, why: str) -> None:
        """An accepted connection closed before it was identified: rate-limited,
        by kind, with the peer's address."""
        kind = why.split(":", 1)[0]
        if kind in ("closed by peer", "socket error", "recv", "send"):  # the peer left
            self._quiet.info("left", "Raft port: %s left before identifying itself: %s",
                             conn.peer, why)
            return
        self.counts["refused"] += 1
        self._quiet.warning(f"refused {kind}", "Raft port: refused %s: %s", conn.peer, why)

    def stats(self) -> dict:
        """Counters for the admin status (read from another thread)."""
        for _ in range(5):
            try:
                pending = sum(1 for c in list(self._pending) if c.server_side)
                break
            except RuntimeError:  # changed on the Raft thread meanwhile
                continue
        else:
            pending = None
        return dict(self.counts, pending=pending, peers=len(self._conns),
                    accepting=self._accept_resume_at is None,
                    log_lines_suppressed=self._quiet.suppressed)

    def _identify(self, der: bytes | None, expected):
        """The node a verified peer certificate names; ValueError if none of ours."""
        if not der:
            raise ValueError("no certificate")
        fleet, nid, addr = peer_identity(der)
        if fleet != self.cfg.fleet_id:
            raise ValueError(f"certificate of fleet {fleet}")
        members = getattr(self._so, "membership", None)  # raft.membership.Membership
        if (members.node_id(addr) if members is not None else
                (nid if self._by_id.get(nid) == addr else None)) != nid:
            raise ValueError(f"certificate names {nid} at {addr}, which is not in the fleet's "
                             "membership")
        node = self._nodes.get(addr)
        if node is None:
            raise ValueError(f"{nid} is not a partner of this node")
        if members is not None:
            members.check_certificate(nid, der)  # revoked, or not the pinned one
        if expected is not None and node != expected:
            raise ValueError(f"dialled {expected.address} but reached {nid} ({addr})")
        return node

    def _recheck_peers(self, change=None, reverse=False) -> None:
        """After a membership change (an entry, or a snapshot's state): close
        each open connection whose certificate the membership now refuses.
        pysyncobj drops a removed address's connection, but a snapshot that
        revokes the certificate of an address that stays a member (a node
        replaced at the same address) drops nothing.  Raft thread."""
        for conn in list(self._conns.values()):
            try:
                self._identify(conn.peer_der, conn.node)
            except ValueError as exc:
                conn.close(f"peer refused after a membership change: {exc}")

    # ----------------------------------------------------------- dialling
    def _should_dial(self, node) -> bool:
        return self._self.address > node.address  # as pysyncobj: one side dials

    def _dial(self, node):
        now = monotonicTime()
        if now - self._last_attempt.get(node, -1e9) < self._so.conf.connectionRetryTime:
            return
        self._last_attempt[node] = now
        target = (getattr(self._so, "_dial_map", None) or {}).get(node.id, node.address)
        host, port = target.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((host, int(port)))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno != errno.EINPROGRESS:
                sock.close()
                return
        self._pending.add(TlsConnection(self, sock, server_side=False, node=node, connecting=True))

    def _on_tick(self):
        self._bind()
        self._resume_accepting()
        now = monotonicTime()
        timeout = self._so.conf.connectionTimeout
        for conn in list(self._pending) + list(self._conns.values()):
            if conn.state == OPEN:
                if now - conn.last_read > timeout:
                    conn.close("peer silent past the connection timeout")
                elif now - conn.last_sent > timeout / 4:
                    conn.send(self._ping)
            elif now - conn.started > timeout:
                conn.close("handshake timed out" if conn.server_side or conn.state != CONNECTING
                           else "connect timed out")
        dialling = {c.node for c in self._pending if c.node is not None}
        for node in self._nodes.values():
            if node not in self._conns and node not in dialling and self._should_dial(node):
                self._dial(node)

    _ping = wire.encode(wire.PING)

    # --------------------------------------------------------- callbacks
    def _on_open(self, conn: TlsConnection):
        self._pending.discard(conn)
        old = self._conns.get(conn.node)
        self._conns[conn.node] = conn
        if old is not None and old is not conn:
            old.node = None  # replaced: its closing is not a disconnection
            old.close("replaced by a new connection")
        else:
            self._onNodeConnected(conn.node)

    def _on_closed(self, conn: TlsConnection, was_open: bool):
        self._pending.discard(conn)
        if conn.node is not None and self._conns.get(conn.node) is conn:
            del self._conns[conn.node]
            self._onNodeDisconnected(conn.node)

    def _deliver(self, conn: TlsConnection, msg: dict):
        self._onMessageReceived(conn.node, msg)

    # ------------------------------------------------------------ sending
    def send(self, node, message) -> bool:
        persist = getattr(self._so, "_persist_before_send", None)
        if persist is not None:
            persist(node, message)
        conn = self._conns.get(node)
        if conn is None:
            return False
        try:
            frame = wire.encode(message)
        except wire.FrameError as exc:
            log.error("not sent to %s: %s", node.id, exc)
            return False
        return conn.send(frame)

    def addNode(self, node):
        self._nodes[node.address] = node

    def dropNode(self, node):
        self._nodes.pop(node.address, None)
        conn = self._conns.get(node)
        if conn is not None:
            conn.close("node dropped")

    def destroy(self):
        for conn in list(self._pending) + list(self._conns.values()):
            conn.node = None
            conn.close()
        self._conns.clear()
        if self._server is not None:
            try:
                self.poller.unsubscribe(self._server.fileno())
            except Exception:  # noqa: BLE001
                pass
            self._server.close()
            self._server = None
        self._accept_resume_at = None
        self._ready = False
