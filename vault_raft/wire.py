"""One blocking msgpack-over-HTTP call, shared by the client, the operator's
tools, the witness monitor and the supervisor (the servers use aiohttp)."""

from __future__ import annotations

import http.client
import urllib.parse

from . import protocol as P


class WireError(Exception):
    """The peer answered with something that is not a msgpack map."""


def call(url: str, method: str, path: str, body: dict | None = None,
         timeout: float = 5.0) -> tuple[int, dict]:
    """``method path`` on ``url``; returns (HTTP status, decoded map).

    Raises OSError / http.client.HTTPException for transport failures and
    :class:`WireError` for a malformed answer."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname or not u.port:
        raise WireError(f"{url}: expected http://host:port")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
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
