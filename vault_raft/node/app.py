"""The node's HTTP API: the aiohttp application, its routes and its error
middleware (an :class:`ApiError` becomes the protocol's error map, never a
traceback).  The operations themselves are :mod:`vault_raft.node.vault_service`
and :mod:`vault_raft.node.trust_service`."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from vault_raft.api import binding as P
from vault_raft.api.openapi import OPENAPI
from vault_raft.logs import QuietLog
from vault_raft.node import httpguard as H
from vault_raft.node.replies import error_response, install, reply
from vault_raft.node.trust_service import NoBundle, TrustService
from vault_raft.node.validate import ApiError
from vault_raft.node.vault_service import VaultService

log = logging.getLogger("vault_raft.node.app")
_quiet = QuietLog(log)


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as exc:
        resp = error_response(exc.status, exc.message, exc.code, **exc.extra)
        if exc.close:
            resp.force_close()
        if "retry_after" in exc.extra:
            resp.headers["Retry-After"] = str(exc.extra["retry_after"])
        return resp
    except web.HTTPException as exc:  # 404, 405, 413 from aiohttp itself
        if exc.status == 405:
            allow = exc.headers.get("Allow", "")
            return error_response(405, f"{request.method} is not allowed here (allowed: "
                                         f"{allow})", headers={"Allow": allow})
        return error_response(exc.status, exc.reason or "error")
    except asyncio.CancelledError:
        raise
    except Exception:  # never a traceback to the client; full detail in the node log
        _quiet.log(logging.ERROR, "internal", "internal error handling %s %s", request.method,
                   request.path, exc_info=True)
        return error_response(500, "internal error")


async def _body(request: web.Request) -> dict:
    if request.content_type != P.CONTENT_TYPE:
        raise ApiError(415, f"send {P.CONTENT_TYPE} bodies")
    raw = await H.read_body(request)
    try:
        body = P.unpack(raw)
    except Exception:
        raise ApiError(400, "body is not valid msgpack") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a msgpack map")
    return body


def build_app(service: VaultService, trust: TrustService | None = None) -> web.Application:
    app = web.Application(middlewares=[H.track, _errors], client_max_size=P.MAX_BODY)
    install(app)

    def post(path, fn):
        async def handler(request):
            out = await fn(await _body(request))
            if isinstance(out, tuple):
                return reply(*out)
            return reply(200, out)
        app.router.add_post(path, handler)

    post("/v1/enroll/start", service.enroll_start)
    post("/v1/enroll/finish", service.enroll_finish)
    post("/v1/recover/start", service.recover_start)
    post("/v1/recover/finish", service.recover_finish)
    post("/v1/manage", service.manage)
    post("/v1/admin", service.admin)

    async def status(request):
        return reply(200, service.status())

    async def openapi(request):
        return web.json_response(OPENAPI)

    async def get_trust(request):
        if trust is None:
            raise ApiError(404, "this node serves no bundle")
        raw = request.query.get("since", "0")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
            raise ApiError(400, "since must be an integer >= 0")
        try:  # answered from what the node holds: never waits on the witness
            return reply(200, await trust.answer(int(raw)))
        except NoBundle as exc:
            raise ApiError(404, str(exc)) from None

    async def get_deployment(request):
        if trust is None:
            raise ApiError(404, "this node serves no bundle")
        fleet = request.query.get("fleet", "")
        try:
            return reply(200, await trust.deployment(fleet))
        except NoBundle as exc:
            raise ApiError(404, str(exc)) from None
        except KeyError:
            raise ApiError(404, f"no deployment record for fleet {fleet[:64]!r} here") from None

    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/trust", get_trust)
    app.router.add_get("/v1/deployment", get_deployment)
    app.router.add_get("/openapi.json", openapi)
    return app

