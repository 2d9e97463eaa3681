"""One blocking msgpack-over-HTTP(S) call, shared by the client, the operator's
tools, the witness monitor and the supervisor (the servers use aiohttp).

Node APIs are ``https://`` and need the fleet's :class:`~vault_raft.api.channel.Channel`
(TLS 1.3, the server pinned to the fleet CA); ``http://`` is for the witness
and for fleets made with ``fleet init --insecure-http``."""

from __future__ import annotations

import threading
import time

from vault_raft.api import binding as P
from vault_raft.api.channel import Channel, ChannelError, connection

TIME_HEADER = P.TIME_HEADER

_clocks: dict[str, float] = {}  # url -> the node's clock minus ours, in ms
_clocks_lock = threading.Lock()


class WireError(Exception):
    """The peer answered with something that is not a msgpack map."""


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
    try:
        node_ms = int(header)
    except (TypeError, ValueError):
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
        raise WireError(f"{url}{path}: HTTP {resp.status} with a malformed body")
    return resp.status, out
