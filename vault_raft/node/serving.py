"""Serving an aiohttp application until SIGTERM or SIGINT: the one serve loop
of the node, the witness (``vault_raft.ops``) and the bench's baseline node.

A server is anything with ``await start(host, port)`` and ``await stop()``:
the node's guarded listener (:class:`vault_raft.node.httpguard.ApiServer`) or
:class:`SiteServer`, aiohttp's own ``TCPSite`` for the others."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web


class Server(Protocol):
    async def start(self, host: str, port: int) -> None: ...

    async def stop(self) -> None: ...


class SiteServer:
    """An application served by aiohttp's ``TCPSite`` (TLS when
    ``ssl_context`` is given); no access log."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None):
        self.runner = web.AppRunner(app, access_log=None)
        self.ssl = ssl_context

    async def start(self, host: str, port: int) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, reuse_address=True,
                          ssl_context=self.ssl).start()

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve_until_signal(server: Server, host: str, port: int, *,
                             started: Callable[[], None] | None = None,
                             stopping: Callable[[], Awaitable[None] | None] | None = None,
                             ) -> None:
    """Start ``server`` on ``host:port``, run ``started()``, wait for SIGTERM
    or SIGINT, run ``stopping()`` (awaited if it returns an awaitable), then
    stop the server."""
    await server.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if started is not None:
        started()
    await stop.wait()
    if stopping is not None:
        out = stopping()
        if out is not None:
            await out
    await server.stop()
