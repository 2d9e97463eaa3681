"""The node's trust service in process (issue 15): answers from what it holds.

A real witness (its aiohttp app, in the test's event loop) or a tarpit in its
place; the service reads a trust file written here as the operator writes it.
"""
import asyncio
import os
import time

import msgpack
import pytest
from aiohttp import web

from vault_raft.fleet.operator import TRUST_FILE
from vault_raft.node import trust_service as TS
from vault_raft.ops.witness_server import build_app
from vault_raft.trust import bundle as B
from vault_raft.trust.mirror import LogMirror
from vault_raft.trust.witness import Limits, WitnessLog

NOW = int(time.time())


def _bundle(ns, epoch):
    e = B.FleetEntry("fa", "current", b"k" * 32, b"e" * 32, (), 10, ("https://127.0.0.1:1",),
                     channel_ca=b"\x30" * 8)
    return B.Bundle(ns, epoch, (e,), NOW - 60, NOW + 86400)


class World:
    def __init__(self, tmp_path):
        self.dir = str(tmp_path)
        self.w_sk, self.w_pk = B.new_signing_key()
        self.op_sk, self.op_pk = B.new_signing_key()
        self.wl = WitnessLog(os.path.join(self.dir, "witness.log"), self.w_sk,
                             limits=Limits(operator_burst=1000, log_burst=1000))
        self.wl.registry.add(self.op_pk)
        self.url = "http://127.0.0.1:9"  # set by serve_witness
        self.signed = {}

    def log(self, ns, epoch):
        c = _bundle(ns, epoch).canonical()
        sig = self.op_sk.sign(c)
        st, wsig, idx = self.wl.cosign(c, sig, self.op_pk, NOW)
        self.signed[(ns, epoch)] = {"bundle": c, "operator_sig": sig, "statement": st,
                                    "witness_sig": wsig, "leaf_index": idx}

    def write_trust(self, ns, epoch, fmt=2):
        """The trust file the operator writes: the log as of now, its head naming ns."""
        statements, sth, sig = self.wl.page(0, 10**6, int(time.time()), ns)
        m = LogMirror.from_statements(self.w_pk, statements, sth, sig)
        signed = dict(self.signed[(ns, epoch)], inclusion=[], consistency=[], sth=sth,
                      sth_sig=sig)
        trust: dict = {"signed": signed, "witness": self.url, "witness_key": self.w_pk,
                 "deployments": {"fa": {"record": b"r", "operator_sig": b"s"}}}
        if fmt == 2:
            trust.update(format=2, namespace=ns, leaf_hashes=m.tree.leaf_hashes(), sth=sth,
                         sth_sig=sig)
        else:  # before format 2: every statement, a v1 head
            sth = B.tree_head_v1(m.size, m.tree.root(), int(time.time()))
            sig = self.w_sk.sign(sth)
            signed.update(sth=sth, sth_sig=sig)
            trust.update(statements=statements, sth=sth, sth_sig=sig)
        tmp = os.path.join(self.dir, TRUST_FILE + ".tmp")
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(trust, use_bin_type=True))
        os.replace(tmp, os.path.join(self.dir, TRUST_FILE))

    def verify(self, answer, state=None, now=None):
        return B.verify(B.SignedBundle.from_wire(answer), self.op_pk, self.w_pk,
                        state or B.TrustState(), now or int(time.time()))


async def serve_witness(w: World):
    runner = web.AppRunner(build_app(w.wl), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    w.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


async def tarpit():
    """Accepts, reads nothing, answers nothing; counts connections."""
    conns = []

    async def handle(reader, writer):
        conns.append(writer)
        await asyncio.sleep(3600)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", conns


async def _started(w: World) -> tuple[TS.TrustService, asyncio.Task]:
    svc = TS.TrustService(w.dir)
    task = asyncio.create_task(svc.run())
    for _ in range(200):
        if svc._view is not None:
            break
        await asyncio.sleep(0.01)
    return svc, task


def test_every_since_gets_proofs_a_client_verifies(tmp_path):
    w = World(tmp_path)
    for i in range(20):
        w.log(f"other{i}", 1)
    w.log("acme", 1)
    for i in range(20, 37):
        w.log(f"other{i}", 1)
    size = w.wl.size

    async def main():
        runner = await serve_witness(w)
        w.write_trust("acme", 1)
        svc, task = await _started(w)
        try:
            for since in range(0, size + 3):
                out = await svc.answer(since)
                if since <= size:
                    state = B.TrustState()
                    if since:
                        state.tree_size, state.tree_root = since, w.wl.tree.root(since)
                    assert w.verify(out, state).epoch == 1
                else:  # beyond the node's log: its head, no proof; a fetch is wanted
                    assert out["consistency"] == [] and svc._lag_wanted
            assert len((await svc.answer(0))["inclusion"]) > 0
            with pytest.raises(KeyError):
                await svc.deployment("nope")
            assert (await svc.deployment("fa"))["record"] == b"r"
        finally:
            task.cancel()
            await runner.cleanup()
    asyncio.run(main())


@pytest.mark.slow
def test_a_tarpit_witness_costs_requests_nothing_and_gets_one_fetch_at_a_time(tmp_path):
    w = World(tmp_path)
    w.log("acme", 1)

    async def main():
        server, w.url, conns = await tarpit()
        w.write_trust("acme", 1)
        svc, task = await _started(w)
        try:
            t_end = time.monotonic() + 3 * TS.FETCH_DEADLINE_S
            worst, n = 0.0, 0
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                await asyncio.gather(*(svc.answer(s) for s in (0, 1, 5, 10**9)))
                worst = max(worst, time.perf_counter() - t0)
                n += 1
                await asyncio.sleep(0.005)
            assert worst < 0.02, worst
            assert n > 100
            # one fetch in flight: a new connection at most every deadline or gap
            assert 1 <= len(conns) <= 3 * TS.FETCH_DEADLINE_S / TS.LAG_FETCH_GAP_S + 1, conns
            assert svc.stats["fetch_failures"] >= 1
        finally:
            task.cancel()
            server.close()
    asyncio.run(main())


def test_a_new_trust_file_is_served_at_once_and_a_superseded_head_is_held_back(
        tmp_path, monkeypatch):
    monkeypatch.setattr(TS, "HOLD_SUPERSEDED_S", 0.6)
    monkeypatch.setattr(TS, "REFRESH_S", 0.2)
    w = World(tmp_path)
    w.log("acme", 1)

    async def main():
        runner = await serve_witness(w)
        w.write_trust("acme", 1)
        svc, task = await _started(w)
        try:
            assert w.verify(await svc.answer(0)).epoch == 1
            w.log("acme", 2)  # the witness logs epoch 2; the node's file is still epoch 1
            t0 = time.monotonic()
            await asyncio.sleep(0.4)
            assert w.verify(await svc.answer(0)).epoch == 1  # held back meanwhile
            while time.monotonic() - t0 < 3:
                try:
                    w.verify(await svc.answer(0))
                except B.SupersededBundle:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the node never showed its bundle superseded")
            assert time.monotonic() - t0 >= 0.6
            w.write_trust("acme", 2)  # the operator's new file: served to the next request
            assert w.verify(await svc.answer(0)).epoch == 2
        finally:
            task.cancel()
            await runner.cleanup()
    asyncio.run(main())


def test_a_format_1_trust_file_is_served_then_followed_with_v2_heads(tmp_path, monkeypatch):
    monkeypatch.setattr(TS, "REFRESH_S", 0.2)
    w = World(tmp_path)
    w.log("acme", 1)

    async def main():
        runner = await serve_witness(w)
        w.write_trust("acme", 1, fmt=1)
        svc = TS.TrustService(w.dir)
        svc._reload()  # loaded before the first fetch: the v1 head from the file
        svc._publish(True)
        out = await svc.answer(0)
        assert B.parse_head(out["sth"]).version == B.STH_V1
        with pytest.raises(B.StaleTreeHead, match="upgraded"):
            w.verify(out)
        task = asyncio.create_task(svc.run())
        try:
            for _ in range(100):
                out = await svc.answer(0)
                if B.parse_head(out["sth"]).version == B.STH_V:
                    break
                await asyncio.sleep(0.05)
            assert w.verify(out).epoch == 1
        finally:
            task.cancel()
            await runner.cleanup()
    asyncio.run(main())
