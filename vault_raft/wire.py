"""One blocking msgpack-over-HTTP(S) call, shared by the client, the operator's
tools, the witness monitor and the supervisor (the servers use aiohttp).

Node APIs are ``https://`` and need the fleet's :class:`~vault_raft.channel.Channel`
(TLS 1.3, the server pinned to the fleet CA); ``http://`` is for the witness
and for fleets made with ``fleet init --insecure-http``."""

from __future__ import annotations


from . import protocol as P
from .channel import Channel, connection


class WireError(Exception):
    """The peer answered with something that is not a msgpack map."""


def call(url: str, method: str, path: str, body: dict | None = None,
         timeout: float = 5.0, channel: Channel | None = None) -> tuple[int, dict]:
    """``method path`` on ``url``; returns (HTTP status, decoded map).

    An ``https`` URL is reached through ``channel`` (required): nothing is sent
    unless the server proves it is the pinned fleet's, else
    :class:`~vault_raft.channel.ChannelRefused` (a ConnectionError).
    Raises OSError / http.client.HTTPException for transport failures and
    :class:`WireError` for a malformed answer or URL."""
    try:
        conn = connection(url, timeout, channel)
    except ValueError as exc:
        raise WireError(str(exc)) from None
    try:
        if body is None:
            conn.request(method, path)
        else:
            conn.request(method, path, body=P.pack(body),
                         headers={"Content-Type": P.CONTENT_TYPE})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        out = P.unpack(data)
    except Exception:
        out = None
    if not isinstance(out, dict):
        raise WireError(f"{url}{path}: HTTP {resp.status} with a malformed body")
    return resp.status, out
