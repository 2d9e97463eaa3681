"""``vault-raft witness serve``: the witness as its own process (HTTP, msgpack bodies).

The witness is meant to be run by someone other than the operator.  Its
directory (``vault-raft witness init``) holds its Ed25519 key (0600), its
public key (``witness.pub``, what clients are configured with), its
append-only log (:class:`~vault_raft.trust.witness.WitnessLog`), the
operator keys it accepts new namespaces from (``operators.json``,
``vault-raft witness register``) and ``witness.json`` (listen address and
limits)::

    POST /v1/cosign  {bundle, operator_sig, operator_key}
                     -> {statement, witness_sig, leaf_index, sth, sth_sig}
                        (409 with the rule broken; 403 for a new namespace
                        from an unregistered key; 413 past the size cap; 429
                        past the rate, with Retry-After; 400 for a malformed
                        bundle or a bad operator signature)
    GET  /v1/log?start=K[&namespace=NS]  -> {start, statements: [...], sth, sth_sig}
                        (at most PAGE statements from index K, and a signed
                        tree head for the size they end at, naming NS's
                        newest bundle as of that size)
    GET  /v1/status       -> {public_key, size, namespaces, operators, limits}
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

from aiohttp import web

from vault_raft.api import binding as P
from vault_raft.errors import VaultRaftError
from vault_raft.fleet.keystore import load_signing_key, new_signing_key_file
from vault_raft.logs import Throttled
from vault_raft.node.replies import reply
from vault_raft.node.serving import SiteServer, serve_until_signal
from vault_raft.trust import bundle as B
from vault_raft.trust.witness import (
    OPERATORS_FILE,
    Limits,
    NotRegistered,
    OperatorRegistry,
    RateLimited,
    TooLarge,
    WitnessLog,
    WitnessRefused,
)

log = logging.getLogger("vault_raft.witness")
PAGE = 512


class WitnessConfigError(VaultRaftError):
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
        json.dump({"host": host, "port": port, "limits": dataclasses.asdict(Limits())}, f,
                  indent=2)
    return pk


def _config(directory: str) -> dict:
    try:
        with open(os.path.join(directory, "witness.json")) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError("not a map")
        return d
    except (OSError, ValueError) as exc:
        raise WitnessConfigError(f"{directory}: not a witness directory ({exc})") from None


def limits(directory: str) -> Limits:
    """The limits in ``witness.json`` (defaults for any it does not set: a
    witness made before limits existed gets them all)."""
    try:
        return Limits.from_dict(_config(directory).get("limits") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise WitnessConfigError(f"{directory}/witness.json: bad limits: {exc}") from None


def registry(directory: str) -> OperatorRegistry:
    if not os.path.exists(os.path.join(directory, "witness.json")):
        raise WitnessConfigError(f"{directory}: not a witness directory (no witness.json)")
    return OperatorRegistry(os.path.join(directory, OPERATORS_FILE))


def witness_url(directory: str) -> str:
    d = _config(directory)
    try:
        return f"http://{d['host']}:{int(d['port'])}"
    except (ValueError, KeyError, TypeError) as exc:
        raise WitnessConfigError(f"{directory}: not a witness directory ({exc})") from None


def build_app(wl: WitnessLog) -> web.Application:
    # a body holds the bundle and two short keys/signatures
    app = web.Application(client_max_size=wl.limits.max_bundle_bytes + 1024)

    async def cosign(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return reply(413, {"error": "too_large", "message": "bundle of more than "
                                f"{wl.limits.max_bundle_bytes} bytes"})
        try:
            body = P.unpack(raw)
            canon, sig, opk = body["bundle"], body["operator_sig"], body["operator_key"]
            if not all(isinstance(x, bytes) for x in (canon, sig, opk)):
                raise TypeError
        except Exception:
            return reply(400, {"error": "bad_request",
                                "message": "send {bundle, operator_sig, operator_key} as msgpack"})
        try:
            # the fsync inside cosign blocks: keep it off the event loop
            st, wsig, idx = await asyncio.to_thread(wl.cosign, canon, sig, opk, int(time.time()))
        except NotRegistered as exc:
            _refusals.warn("refused a new namespace from %s: %s", request.remote, exc)
            return reply(403, {"error": "not_registered", "message": str(exc)})
        except TooLarge as exc:
            return reply(413, {"error": "too_large", "message": str(exc)})
        except RateLimited as exc:
            return web.Response(status=429, body=P.pack({"error": "rate_limited",
                                                          "message": str(exc)}),
                                content_type=P.CONTENT_TYPE,
                                headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
        except WitnessRefused as exc:
            return reply(409, {"error": "refused", "message": str(exc)})
        except B.TrustError as exc:
            return reply(400, {"error": "bad_request", "message": str(exc)})
        bundle = B.Bundle.from_canonical(canon)  # cosign checked it: this cannot fail
        sth, sth_sig = wl.tree_head(int(time.time()), bundle.namespace)
        log.info("co-signed %s epoch %s as leaf %d", bundle.namespace, bundle.epoch, idx)
        return reply(200, {"statement": st, "witness_sig": wsig, "leaf_index": idx,
                            "sth": sth, "sth_sig": sth_sig})

    async def get_log(request: web.Request) -> web.Response:
        try:
            raw = request.query.get("start", "0")
            if len(raw) > 20:
                raise ValueError
            start = int(raw)
            if start < 0:
                raise ValueError
        except ValueError:
            return reply(400, {"error": "bad_request", "message": "start must be an integer >= 0"})
        namespace = request.query.get("namespace", "")
        if len(namespace.encode()) > B.MAX_NAMESPACE:
            return reply(400, {"error": "bad_request",
                                "message": f"namespace is at most {B.MAX_NAMESPACE} bytes"})
        statements, sth, sth_sig = wl.page(start, PAGE, int(time.time()), namespace)
        return reply(200, {"start": start, "statements": statements, "sth": sth,
                            "sth_sig": sth_sig})

    async def status(request: web.Request) -> web.Response:
        try:
            operators = len(wl.registry.keys())
        except Exception:  # shown as unknown; cosign says why
            operators = -1
        return reply(200, {"public_key": wl.public_key, "size": wl.size,
                            "namespaces": {ns: f["epoch"] for ns, f in wl.fleets.items()},
                            "operators": operators,
                            "limits": dataclasses.asdict(wl.limits)})

    app.router.add_post("/v1/cosign", cosign)
    app.router.add_get("/v1/log", get_log)
    app.router.add_get("/v1/status", status)
    return app


# One log line per refused new namespace, at most one every 10 s (with the
# count of those not logged): a flood of throwaway keys is seen, not echoed.
_refusals = Throttled(log, 10.0, " (and {} more refused since)")


async def _serve(wl: WitnessLog, host: str, port: int) -> None:
    def started() -> None:
        log.info("witness %s serving %d log entries on http://%s:%d", wl.public_key.hex()[:16],
                 wl.size, host, port)
    await serve_until_signal(SiteServer(build_app(wl)), host, port, started=started)


def spawn(directory: str, timeout: float = 20.0) -> subprocess.Popen:
    """Start ``vault-raft witness serve`` as its own process (output in
    ``DIR/witness.out``) and wait until it answers; the caller stops it with
    :func:`stop`."""
    from vault_raft.api import http as wire
    from vault_raft.ops.cluster import ClusterError, wait_until
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
    wl = WitnessLog(os.path.join(directory, "witness.log"), sk, registry(directory),
                    limits(directory))
    try:
        asyncio.run(_serve(wl, host, int(port)))
    finally:
        wl.close()
    return 0
