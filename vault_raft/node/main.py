"""A vault node's process: :func:`run_node` loads the node's directory, opens
its Raft replica and serves the API until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from vault_raft.fleet.config import ConfigError, NodeConfig
from vault_raft.fleet.keystore import FileKeystore
from vault_raft.node import restart
from vault_raft.node.app import build_app
from vault_raft.node.httpguard import ApiServer, track
from vault_raft.node.limits import Limits, raise_nofile_limit
from vault_raft.node.metrics import NodeMetrics
from vault_raft.node.replica import VaultReplica
from vault_raft.node.replies import error_response, install, reply
from vault_raft.node.serving import serve_until_signal
from vault_raft.node.trust_service import TrustService
from vault_raft.node.vault_service import VaultService
from vault_raft.raft.settings import RaftSettings

log = logging.getLogger("vault_raft.node.main")


async def _serve(service: VaultService, host: str, port: int, ssl_context=None,
                 limits: Limits | None = None, nofile: dict | None = None) -> None:
    """Serve the API until SIGTERM/SIGINT: over TLS 1.3 with the node's fleet
    certificate when ``ssl_context`` is given (the default), else plain HTTP
    (node.json ``"api_tls": false``: local debugging only).  Connections are
    capped and timed (:mod:`.httpguard`)."""
    trust = TrustService(service.cfg.dir)
    api = ApiServer(build_app(service, trust), limits=limits, ssl_context=ssl_context,
                    logger=log, nofile=nofile)
    service.http = api
    refresher: list[asyncio.Task] = []

    def started() -> None:
        refresher.append(asyncio.create_task(trust.run()))
        _log_serving(service, api, host, port, ssl_context is not None, nofile)

    def stopping() -> None:
        log.info("node %s stopping", service.cfg.node_id)
        refresher[0].cancel()
    await serve_until_signal(api, host, port, started=started, stopping=stopping)


def _log_serving(service: VaultService, api: ApiServer, host: str, port: int, tls: bool,
                 nofile: dict | None) -> None:
    if not tls:
        log.warning("node %s serving the API on http://%s:%d: PLAIN HTTP, unencrypted and "
                    "unauthenticated (api_tls is false: for local debugging only)",
                    service.cfg.node_id, host, port)
    else:
        log.info("node %s serving the API on https://%s:%d (TLS 1.3, fleet certificate)",
                 service.cfg.node_id, host, port)
    log.info("API limits: %d connections (open files: %s), TLS handshake %gs, headers %gs, "
             "body %gs, idle %gs", api.max_connections,
             (nofile or {}).get("soft", "?"), api.limits.handshake_timeout,
             api.limits.header_timeout, api.limits.body_timeout, api.limits.idle_timeout)


class _ServingDown:
    """While the node cannot run (its disk takes no writes), its API port
    answers ``/v1/status`` with ``healthy: false`` and the reason, and every
    other request with 503 (nothing proposed): clients fail over at once and
    operators see why, instead of a refused connection."""

    def __init__(self, cfg: NodeConfig, ssl_context, reason: str):
        self.cfg, self.ssl, self.reason = cfg, ssl_context, reason
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: ApiServer | None = None

    async def _start(self) -> ApiServer:
        async def status(request):
            return reply(200, {"node_id": self.cfg.node_id, "fleet_id": self.cfg.fleet_id,
                                "role": "down", "healthy": False, "reason": self.reason})

        async def down(request):
            return error_response(503, self.reason, proposed=False)
        app = web.Application(middlewares=[track])
        install(app)
        app.router.add_get("/v1/status", status)
        app.router.add_route("*", "/{tail:.*}", down)
        api = ApiServer(app, ssl_context=self.ssl, logger=log)
        await api.start(self.cfg.listen_host, self.cfg.api_port)
        return api

    def __enter__(self):
        self._thread.start()
        try:
            self._runner = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        except OSError as exc:  # the port is not ours to take: wait without it
            log.warning("cannot serve the status while waiting: %s", exc)
            self._runner = None
        return self

    def __exit__(self, *exc):
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        return False


def run_node(node_dir: str, settings: RaftSettings | None = None) -> int:
    """Run one node in the foreground until SIGTERM/SIGINT. Returns an exit code."""
    nofile = raise_nofile_limit()  # before the replica opens its files and sockets
    cfg = NodeConfig.load(node_dir)
    try:
        limits = Limits.from_pairs(cfg.limits)
    except ValueError as exc:
        raise SystemExit(f"{node_dir}/node.json: {exc}") from None
    if nofile["soft"] != nofile["soft_at_start"]:
        log.info("open-file limit raised from %d to %d", nofile["soft_at_start"],
                 nofile["soft"])
    ks = FileKeystore.load(cfg.keystore_path)
    if ks.fleet_id != cfg.fleet_id:
        raise SystemExit(f"keystore belongs to fleet {ks.fleet_id}, node to {cfg.fleet_id}")
    if settings is None:
        try:
            settings = RaftSettings(**dict(cfg.raft))
        except TypeError as exc:
            raise SystemExit(f"{node_dir}/node.json: bad raft setting: {exc}") from None
    try:
        tls = cfg.tls_config()
        api_ssl = cfg.api_ssl_context()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    # after a storage failure: waits for the disk, serving its status meanwhile
    truncate_after = restart.prepare(
        cfg.data_dir, while_waiting=lambda reason: _ServingDown(cfg, api_ssl, reason))
    replica = VaultReplica(cfg.raft_addr, list(cfg.partners), cfg.data_dir,
                           settings=settings, dial=dict(cfg.dial), tls=tls,
                           truncate_after=truncate_after, bind=cfg.raft_bind)
    metrics = NodeMetrics(replica, cfg.node_id)
    if replica.journal_path.journal is not None:
        replica.journal_path.journal.on_sync = metrics.fsync_seconds.observe
    if cfg.metrics_port:
        try:
            metrics.serve(cfg.listen_host, cfg.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on port %d: %s", cfg.metrics_port, exc)
    service = VaultService(cfg, ks, replica, metrics=metrics)
    service.nofile = nofile
    try:
        asyncio.run(_serve(service, cfg.listen_host, cfg.api_port, api_ssl, limits, nofile))
    finally:
        replica.destroy_synchronous()  # syncs and closes the journal
    return 0
