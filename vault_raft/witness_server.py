"""``vault-raft witness serve``: the witness as its own process (HTTP, msgpack bodies).

The witness is meant to be run by someone other than the operator.  Its
directory (``vault-raft witness init``) holds its Ed25519 key (0600), its
public key (``witness.pub``, what clients are configured with), its
append-only log (:class:`~vault_raft.fleet.witness.WitnessLog`) and its
listen address::

    POST /v1/cosign  {bundle, operator_sig, operator_key}
                     -> {statement, witness_sig, leaf_index, sth, sth_sig}
                        (409 with the rule broken; 400 for a malformed bundle
                        or a bad operator signature)
    GET  /v1/log?start=K  -> {start, statements: [...], sth, sth_sig}
                        (at most PAGE statements from index K, and a signed
                        tree head for the size they end at)
    GET  /v1/status       -> {public_key, size, namespaces}
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time

from aiohttp import web

from . import protocol as P
from .fleet import bundle as B
from .fleet.keystore import load_signing_key, new_signing_key_file
from .fleet.witness import WitnessLog, WitnessRefused

log = logging.getLogger("vault_raft.witness")
PAGE = 512


class WitnessConfigError(Exception):
    pass


def init_witness(directory: str, host: str = "127.0.0.1", port: int = 7000) -> bytes:
    """Create a witness directory; returns the witness public key."""
    cfg_path = os.path.join(directory, "witness.json")
    if os.path.exists(cfg_path):
        raise WitnessConfigError(f"{cfg_path} exists: refusing to overwrite a witness")
    if not 1024 <= port <= 65535:
        raise WitnessConfigError("--port must be 1024..65535")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pk = new_signing_key_file(os.path.join(directory, "witness.key"))
    with open(os.path.join(directory, "witness.pub"), "w") as f:
        f.write(pk.hex() + "\n")
    with open(cfg_path, "w") as f:
        json.dump({"host": host, "port": port}, f)
    return pk


def witness_url(directory: str) -> str:
    try:
        with open(os.path.join(directory, "witness.json")) as f:
            d = json.load(f)
        return f"http://{d['host']}:{int(d['port'])}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WitnessConfigError(f"{directory}: not a witness directory ({exc})") from None


def _reply(status: int, obj: dict) -> web.Response:
    return web.Response(status=status, body=P.pack(obj), content_type=P.CONTENT_TYPE)


def build_app(wl: WitnessLog) -> web.Application:
    app = web.Application(client_max_size=P.MAX_BODY)

    async def cosign(request: web.Request) -> web.Response:
        try:
            body = P.unpack(await request.read())
            canon, sig, opk = body["bundle"], body["operator_sig"], body["operator_key"]
            if not all(isinstance(x, bytes) for x in (canon, sig, opk)):
                raise TypeError
        except Exception:
            return _reply(400, {"error": "bad_request",
                                "message": "send {bundle, operator_sig, operator_key} as msgpack"})
        try:
            # the fsync inside cosign blocks: keep it off the event loop
            st, wsig, idx = await asyncio.to_thread(wl.cosign, canon, sig, opk, int(time.time()))
        except WitnessRefused as exc:
            return _reply(409, {"error": "refused", "message": str(exc)})
        except B.TrustError as exc:
            return _reply(400, {"error": "bad_request", "message": str(exc)})
        sth, sth_sig = wl.tree_head(int(time.time()))
        bundle = B.Bundle.from_canonical(canon)  # cosign checked it: this cannot fail
        log.info("co-signed %s epoch %s as leaf %d", bundle.namespace, bundle.epoch, idx)
        return _reply(200, {"statement": st, "witness_sig": wsig, "leaf_index": idx,
                            "sth": sth, "sth_sig": sth_sig})

    async def get_log(request: web.Request) -> web.Response:
        try:
            start = int(request.query.get("start", "0"))
            if start < 0:
                raise ValueError
        except ValueError:
            return _reply(400, {"error": "bad_request", "message": "start must be an integer >= 0"})
        statements, sth, sth_sig = wl.page(start, PAGE, int(time.time()))
        return _reply(200, {"start": start, "statements": statements, "sth": sth,
                            "sth_sig": sth_sig})

    async def status(request: web.Request) -> web.Response:
        return _reply(200, {"public_key": wl.public_key, "size": len(wl.leaves),
                            "namespaces": {ns: f["epoch"] for ns, f in wl.fleets.items()}})

    app.router.add_post("/v1/cosign", cosign)
    app.router.add_get("/v1/log", get_log)
    app.router.add_get("/v1/status", status)
    return app


async def _serve(wl: WitnessLog, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(wl), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("witness %s serving %d log entries on http://%s:%d", wl.public_key.hex()[:16],
             len(wl.leaves), host, port)
    await stop.wait()
    await runner.cleanup()


def spawn(directory: str, timeout: float = 20.0) -> subprocess.Popen:
    """Start ``vault-raft witness serve`` as its own process (output in
    ``DIR/witness.out``) and wait until it answers; the caller stops it with
    :func:`stop`."""
    from . import wire
    from .cluster import ClusterError, wait_until
    url = witness_url(directory)
    with open(os.path.join(directory, "witness.out"), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vault_raft", "witness", "serve", "--dir",
                                 directory], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def up():
        if proc.poll() is not None:
            raise ClusterError(f"the witness exited; see {directory}/witness.out")
        try:
            return wire.call(url, "GET", "/v1/status", timeout=0.5)[0] == 200
        except OSError:
            return False
    try:
        wait_until(up, timeout, what="the witness to answer")
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL past 10 s; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_witness(directory: str) -> int:
    url = witness_url(directory)
    host, port = url[len("http://"):].rsplit(":", 1)
    sk = load_signing_key(os.path.join(directory, "witness.key"), "witness key")
    wl = WitnessLog(os.path.join(directory, "witness.log"), sk)
    try:
        asyncio.run(_serve(wl, host, int(port)))
    finally:
        wl.close()
    return 0
