"""Deadlines in the node's clock: a client whose clock is a minute slow
enrolls and recovers; a clock that will not hold still is reported as a
clock problem, not as "no majority"; a node that cannot even be connected to
is no reason to give up a counted request."""
import os
import socket
import time

import pytest
from hostile import host_port, settled_commit_index

from vault_raft import client as C
from vault_raft.api import http as wire

pytestmark = pytest.mark.cluster

_real_time = time.time


@pytest.fixture
def fresh_clocks():
    wire._clocks.clear()
    yield
    wire._clocks.clear()


def test_a_client_a_minute_slow_enrolls_and_recovers(cluster_factory, monkeypatch,
                                                     fresh_clocks):
    cl = cluster_factory(3)
    cli = C.Client(os.path.join(cl.dir, "fleet.json"))
    monkeypatch.setattr(time, "time", lambda: _real_time() - 60.0)
    assert cli.enroll("slow", "code", b"slow's key", max_attempts=3) == 3
    with pytest.raises(C.WrongCode) as exc:
        cli.recover("slow", "not the code")
    assert exc.value.attempts_left == 2
    assert cli.recover("slow", "code").secret == b"slow's key"
    cli.change_secret("slow", "code", b"new key")
    # a clock that steps back a minute between two requests: the refusal
    # teaches the new offset, the request goes again (nothing was proposed)
    monkeypatch.setattr(time, "time", lambda: _real_time() - 120.0)
    rec = cli.recover("slow", "code")
    assert rec.secret == b"new key" and rec.failed_attempts == 0
    # and a minute fast
    monkeypatch.setattr(time, "time", lambda: _real_time() + 60.0)
    assert cli.recover("slow", "code").secret == b"new key"


def test_a_clock_that_keeps_jumping_is_reported_as_such(cluster_factory, monkeypatch,
                                                        fresh_clocks):
    cl = cluster_factory(3)
    cli = C.Client(os.path.join(cl.dir, "fleet.json"), timeout=3.0)
    cli.enroll("jumpy", "code", b"key", max_attempts=3)
    before = settled_commit_index(cl)
    jumps = iter(range(1, 10 ** 6))
    monkeypatch.setattr(time, "time", lambda: _real_time() - 30.0 * next(jumps))
    with pytest.raises(C.ClockSkew) as exc:
        cli.recover("jumpy", "code")
    monkeypatch.setattr(time, "time", _real_time)
    assert "clock" in str(exc.value) and "majority" not in str(exc.value)
    assert exc.value.exit_code == 5
    assert settled_commit_index(cl) == before  # nothing was proposed
    assert cli.recover("jumpy", "code").failed_attempts == 0


def test_a_node_that_cannot_be_connected_to_is_skipped_for_a_counted_request(
        cluster_factory, fresh_clocks):
    cl = cluster_factory(3)
    fleet = os.path.join(cl.dir, "fleet.json")
    C.Client(fleet).enroll("pat", "code", b"pat's key", max_attempts=3)
    stuck = [n for n in cl.ids if n != cl.leader()][0]
    cl.pause(stuck)  # SIGSTOP: its listen queue fills and new connections hang in connect
    filler = []
    try:
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(host_port(cl.api[stuck]))
            filler.append(s)
        time.sleep(0.5)  # the kernel completes the fillers' handshakes until the queue is full
        cli = C.Client(fleet, request_timeout=1.0,
                       nodes=[cl.api[stuck]] + [cl.api[n] for n in cl.ids if n != stuck])
        cli._next = 0  # the stuck node first
        t0 = time.monotonic()
        rec = cli.recover("pat", "code")
        assert rec.secret == b"pat's key" and rec.failed_attempts == 0
        assert time.monotonic() - t0 < 5
    finally:
        for s in filler:
            s.close()
        cl.resume(stuck)


def test_a_trusted_client_a_minute_slow_enrolls_and_recovers(tmp_path, cluster_factory,
                                                             monkeypatch, fresh_clocks):
    from conftest import free_base_port, vault_cli

    from vault_raft.ops import witness_server
    wdir, port = str(tmp_path / "witness"), free_base_port(1) + 1
    assert vault_cli("witness", "init", "--dir", wdir, "--port", str(port)).returncode == 0
    proc = witness_server.spawn(wdir)
    try:
        cl = cluster_factory(3)
        op = str(tmp_path / "op")
        assert vault_cli("operator", "init", "--dir", op, "--namespace", "slow", "--witness",
                         f"http://127.0.0.1:{port}", "--witness-key",
                         f"@{wdir}/witness.pub").returncode == 0
        r = vault_cli("fleet", "publish", "--fleet", cl.dir, "--operator", op)
        assert r.returncode == 0, r.stderr
        try:  # where the fleet checks tenant tokens: the app's (its list is dated: first)
            from conftest import app_tenant
            kw = {"token": app_tenant([cl.dir], "slow")}
        except ImportError:
            kw = {}
        slow = lambda: _real_time() - 60.0  # noqa: E731
        monkeypatch.setattr(time, "time", slow)
        cli = C.TrustedClient(os.path.join(op, "client.json"), str(tmp_path / "state.json"),
                              clock=slow, **kw)
        assert cli.enroll("tess", "code", b"tess's key", max_attempts=4) == 4
        assert cli.recover("tess", "code").secret == b"tess's key"
    finally:
        monkeypatch.setattr(time, "time", _real_time)
        witness_server.stop(proc)
