"""The API's replies: the protocol's msgpack error map, the node's clock in
every reply, and client-controlled text made safe for one log line.

Every reply carries ``Vault-Time``: the node's wall clock in Unix ms, from
which clients learn the offset to send ``deadline_ms`` in the node's clock.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from vault_raft.api import binding as P
from vault_raft.node.validate import now_ms

TIME_HEADER = P.TIME_HEADER


def reply(status: int, obj: dict) -> web.Response:
    """A msgpack reply."""
    return web.Response(status=status, body=P.pack(obj), content_type=P.CONTENT_TYPE)


def one_line(exc: BaseException | str | None, limit: int = 160) -> str:
    """A client-controlled error text as one short printable line."""
    if exc is None:
        return ""
    if isinstance(exc, RequestPayloadError) and exc.args \
            and isinstance(exc.args[0], BaseException):
        return one_line(exc.args[0], limit)
    if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, BaseException):
        return one_line(exc.__cause__, limit)
    if isinstance(exc, HttpProcessingError):
        text = exc.message if isinstance(exc.message, str) else str(exc)
    elif isinstance(exc, BaseException):
        text = str(exc) or exc.__class__.__name__
    else:
        text = str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith("message:"):  # "400, message:" then the text
        lines = lines[1:]
    text = (lines[0] if lines else "").rstrip(":")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:limit] + ("..." if len(text) > limit else "")


def error_response(status: int, message: str, code: str | None = None,
                   headers: dict | None = None, **extra) -> web.Response:
    """The protocol's error map ``{"error": code, "message": text, ...}``."""
    body = {"error": code or P.error_code(status), "message": message, **extra}
    resp = web.Response(status=status, body=P.pack(body), content_type=P.CONTENT_TYPE,
                        headers=headers)
    resp.headers[TIME_HEADER] = str(now_ms())
    return resp


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every reply says the node's clock; an error aiohttp made itself (an
    Expect it does not support, say) becomes the protocol's error map."""
    response.headers[TIME_HEADER] = str(now_ms())
    if response.status >= 400 and response.content_type != P.CONTENT_TYPE \
            and isinstance(response, web.Response):
        body = P.pack({"error": P.error_code(response.status),
                       "message": response.reason or "error"})
        response.body = body
        response.content_type = P.CONTENT_TYPE
        response.charset = None
        response.headers["Content-Length"] = str(len(body))


def install(app: web.Application) -> None:
    """The app-level half (call before the app is frozen): the clock header."""
    app.on_response_prepare.append(_on_prepare)


