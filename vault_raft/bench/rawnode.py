"""Baseline node: a replicated counter on the *same* replica stack as the vault.

Same durable journal, same sync-before-send transport, same Raft settings,
same aiohttp front (TLS 1.3 unless node.json says ``api_tls: false``) and
commit bridge -- only the state machine is a bare counter.  The difference
between this and the vault is what the vault's layers (OPAQUE, sealing, the
record state machine) cost.

    python -m vault_raft.bench.rawnode --dir FLEET/nK     (uses the node's node.json)
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web
from pysyncobj import replicated

from vault_raft.api import binding as P
from vault_raft.fleet.config import NodeConfig
from vault_raft.node.bridge import commit
from vault_raft.node.replies import reply
from vault_raft.node.serving import SiteServer, serve_until_signal
from vault_raft.node.validate import ApiError
from vault_raft.raft.replica import DurableReplica


class CounterReplica(DurableReplica):
    def __init__(self, *args, **kwargs):
        self._counters: dict[bytes, int] = {}
        super().__init__(*args, **kwargs)

    @replicated
    def _inc(self, key: bytes):
        with self._state_lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            return self._counters[key]

    def propose(self, key: bytes, callback) -> None:
        self._inc(key, callback=callback)

    def _snapshot_state(self) -> bytes:
        return P.pack(self._counters)

    def _check_state(self, blob: bytes) -> None:
        if not isinstance(P.unpack(blob), dict):
            raise ValueError("bad counter snapshot")

    def _restore_state(self, blob: bytes) -> None:
        self._counters = dict(P.unpack(blob))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    cfg = NodeConfig.load(a.dir)
    rep = CounterReplica(cfg.raft_addr, list(cfg.partners), cfg.data_dir + "-raw",
                         tls=cfg.tls_config())

    async def inc(request):
        try:
            body = P.unpack(await request.read())
            key = body["key"] if isinstance(body, dict) else b""
            value = await commit(rep, rep.propose, bytes(key), 3.0)
        except ApiError as exc:
            return web.Response(status=exc.status, body=P.pack({"error": exc.message}))
        except Exception:
            return web.Response(status=400, body=P.pack({"error": "bad request"}))
        return reply(200, {"value": value})

    async def status(request):
        st = rep.status()
        return reply(200, {"role": st.get("role"), "healthy": rep.can_serve(),
                           "commit_index": st.get("commit_index")})

    app = web.Application()
    app.router.add_post("/inc", inc)
    app.router.add_get("/v1/status", status)
    # the same TLS front as the vault's nodes (api_tls in node.json)
    server = SiteServer(app, ssl_context=cfg.api_ssl_context())
    try:
        asyncio.run(serve_until_signal(server, cfg.api_host, cfg.api_port))
    finally:
        rep.destroy_synchronous()
    return 0


if __name__ == "__main__":
    sys.exit(main())
