"""The trust path with real processes and a hostile or absent witness (issue 15):

* ``GET /v1/trust`` is answered from what the node holds: under 100 ms with
  the witness paused (SIGSTOP) or replaced by a tarpit that drips its answer,
  for every kind of ``since`` (none, current, beyond the node's log);
* 10,000 submissions for new namespaces with throwaway keys are all refused
  by the witness, its log does not grow, and neither do the node's memory or
  its trust latency;
* a client with no saved state is not served a superseded bundle: nodes
  holding an old trust file are skipped, and when every node holds one the
  client refuses (exit 6) -- while the same client without the freshness
  check (tests/bugs/trust_without_freshness.py) takes the old bundle.
"""
import os
import signal
import socket
import statistics
import threading
import time

import pytest
from bugs.trust_without_freshness import without_freshness
from conftest import free_base_port, vault_cli

from vault_raft import client as C
from vault_raft.api import channel as CH
from vault_raft.api import http as wire
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.fleet.operator import TRUST_FILE
from vault_raft.node import trust_service as TS
from vault_raft.ops import witness_server
from vault_raft.ops.cluster import wait_until
from vault_raft.trust import bundle as B


@pytest.fixture
def witness(tmp_path):
    d = str(tmp_path / "witness")
    port = free_base_port(1) + 1
    assert vault_cli("witness", "init", "--dir", d, "--port", str(port)).returncode == 0
    procs = [witness_server.spawn(d)]

    def restart():
        procs.append(witness_server.spawn(d))
        return procs[-1]
    try:
        yield f"http://127.0.0.1:{port}", d, procs, restart
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            witness_server.stop(p)


def _operator(tmp_path, url, wdir, fleet_dir) -> str:
    op = str(tmp_path / "op")
    r = vault_cli("operator", "init", "--dir", op, "--namespace", "acme", "--witness", url,
                  "--witness-key", f"@{wdir}/witness.pub")
    assert r.returncode == 0 and "registered with the witness" in r.stderr, r.stderr
    r = vault_cli("fleet", "publish", "--fleet", fleet_dir, "--operator", op)
    assert r.returncode == 0, r.stderr
    return op


def _trust_latencies(url: str, size: int, rounds: int = 30) -> list[float]:
    """Seconds per GET /v1/trust (a new TLS connection each), for a client that
    saw nothing, the node's size, and far more than the node holds."""
    out = []
    for _ in range(rounds):
        for since in (0, size, size + 1000):
            t0 = time.perf_counter()
            status, body = wire.call(url, "GET", f"/v1/trust?since={since}", timeout=5,
                                     channel=CH.UNPINNED)
            out.append(time.perf_counter() - t0)
            assert status == 200 and B.parse_head(body["sth"]).size == size
    return out


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Tarpit:
    """Accepts connections on the witness's port and answers one byte of its
    status line every 0.5 s: a fetch that trusted per-read timeouts would
    never end."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.stop = threading.Event()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        with conn:
            for b in b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n":
                if self.stop.wait(0.5):
                    return
                try:
                    conn.sendall(bytes([b]))
                except OSError:
                    return
            self.stop.wait()

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.mark.cluster
def test_the_trust_path_never_waits_on_the_witness_and_foreign_statements_are_refused(
        tmp_path, witness, cluster_factory):
    url, wdir, procs, restart = witness
    cl = cluster_factory(3)
    _operator(tmp_path, url, wdir, cl.dir)
    pid, api = cl.pid("n1"), cl.api["n1"]
    size = wire.call(url, "GET", "/v1/status")[1]["size"]
    base = _trust_latencies(api, size, 10)

    # 1. the witness paused: the node's refresh is stuck, its answers are not
    os.kill(procs[0].pid, signal.SIGSTOP)
    time.sleep(TS.REFRESH_S + TS.FETCH_DEADLINE_S)  # a refresh is due and stuck meanwhile
    paused = _trust_latencies(api, size)
    assert max(paused) < 0.1, f"max {max(paused) * 1000:.0f} ms with the witness paused"
    fresh = C.TrustedClient(os.path.join(tmp_path, "op", "client.json"),
                            str(tmp_path / "fresh.json"))
    assert fresh.verify_fleet().epoch == 1  # the head the node holds is recent enough
    os.kill(procs[0].pid, signal.SIGCONT)
    witness_server.stop(procs[0])

    # 2. a tarpit in its place, dripping a never-ending answer
    tarpit = Tarpit(int(url.rsplit(":", 1)[1]))
    try:
        time.sleep(TS.REFRESH_S + TS.FETCH_DEADLINE_S)  # a refresh is due and dripped
        dripped = _trust_latencies(api, size)
        assert tarpit.accepted >= 1  # the node did try it, in the background
    finally:
        tarpit.close()
    assert max(dripped) < 0.1, f"max {max(dripped) * 1000:.0f} ms with a tarpit witness"

    # 3. the genuine witness again; 10,000 new namespaces from throwaway keys
    restart()
    time.sleep(TS.REFRESH_S)  # the node's next refresh, from the genuine witness
    rss0 = _rss_kib(pid)
    before = _trust_latencies(api, size, 10)
    codes = _flood(url, 10_000)
    assert codes.get(200, 0) == 0, codes
    assert set(codes) <= {403, 429}, codes
    status = wire.call(url, "GET", "/v1/status")[1]
    assert status["size"] == size and set(status["namespaces"]) == {"acme"}
    time.sleep(TS.REFRESH_S + 1)  # the node has refreshed since
    after = _trust_latencies(api, size, 10)
    rss1 = _rss_kib(pid)
    assert rss1 - rss0 < 8 * 1024, f"node RSS grew {rss1 - rss0} KiB"
    assert statistics.median(after) < max(3 * statistics.median(before), 0.02), (before, after)
    print(f"\ntrust latency ms: baseline p50 {statistics.median(base) * 1e3:.1f}, "
          f"witness paused p50 {statistics.median(paused) * 1e3:.1f} max "
          f"{max(paused) * 1e3:.1f}, tarpit p50 {statistics.median(dripped) * 1e3:.1f} max "
          f"{max(dripped) * 1e3:.1f}, after 10k foreign submissions p50 "
          f"{statistics.median(after) * 1e3:.1f}; node RSS {rss0} -> {rss1} KiB; "
          f"witness answers {codes}")


def _flood(url: str, n: int) -> dict:
    """n co-sign requests, each a well-formed bundle for a new namespace signed
    by a fresh key: what anyone could send.  Returns {HTTP status: count}."""
    import http.client

    from vault_raft.api import binding as P
    host, port = url[len("http://"):].rsplit(":", 1)
    entry = B.FleetEntry("evil", "current", b"k" * 32, b"e" * 32, (), 10,
                         ("https://127.0.0.1:1",), channel_ca=b"\x30" * 8)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    codes: dict = {}
    now = int(time.time())
    for i in range(n):
        sk, pk = B.new_signing_key()
        canon = B.Bundle(f"throwaway-{i}-{pk.hex()[:8]}", 1, (entry,), now, now + 3600
                         ).canonical()
        body = P.pack({"bundle": canon, "operator_sig": sk.sign(canon), "operator_key": pk})
        conn.request("POST", "/v1/cosign", body=body,
                     headers={"Content-Type": P.CONTENT_TYPE})
        resp = conn.getresponse()
        resp.read()
        codes[resp.status] = codes.get(resp.status, 0) + 1
    conn.close()
    return codes


# ------------------------------------------------------------- freshness

@pytest.mark.cluster
def test_a_client_without_state_is_not_served_a_superseded_bundle(tmp_path, witness,
                                                                  cluster_factory):
    url, wdir, _, _ = witness
    cl = cluster_factory(3, start=False)
    import json
    p = os.path.join(cl.dir, "fleet.json")
    d = json.load(open(p))
    d["ksf"] = IDENTITY_KSF.to_dict()
    json.dump(d, open(p, "w"))
    cl.start()
    cl.wait_leader(30)
    cl.wait_healthy(timeout=30)
    op = _operator(tmp_path, url, wdir, cl.dir)
    client_json = os.path.join(op, "client.json")
    old = {n: open(os.path.join(cl.node_dir(n), TRUST_FILE), "rb").read() for n in cl.ids}
    assert vault_cli("fleet", "publish", "--fleet", cl.dir, "--operator", op).returncode == 0

    def fresh_client():
        state = str(tmp_path / f"state-{time.monotonic_ns()}.json")  # nothing saved
        return C.TrustedClient(client_json, state, timeout=5, request_timeout=5)

    wait_until(lambda: all(_epoch(cl.api[n]) == 2 for n in cl.ids), 10,
               what="every node to serve epoch 2")
    # two of the three nodes go back to epoch 1's trust file (a node left out of
    # a publish, or someone replaying what it once served)
    for n in ("n1", "n2"):
        _plant(cl.node_dir(n), old[n])
    wait_until(lambda: all(_epoch(cl.api[n]) == 1 for n in ("n1", "n2")), 10,
               what="n1 and n2 to serve epoch 1")
    # the client asks n1 and n2 first (client.json lists them first): it skips them
    assert fresh_client().verify_fleet().epoch == 2
    # the same client without the freshness check would take epoch 1 from n1
    with without_freshness():
        assert fresh_client().verify_fleet().epoch == 1

    # every node serves epoch 1: refused, nothing sent past /v1/trust (exit 6)
    _plant(cl.node_dir("n3"), old["n3"])
    wait_until(lambda: _epoch(cl.api["n3"]) == 1, 10, what="n3 to serve epoch 1")
    with pytest.raises(C.Untrusted) as ei:
        fresh_client().verify_fleet()
    assert ei.value.reason is B.SupersededBundle, ei.value
    r = vault_cli("fleet", "verify", "--client", client_json, "--state",
                  str(tmp_path / "cli-state.json"))
    assert r.returncode == 6 and "SupersededBundle" in r.stderr, r.stderr
    secret = tmp_path / "s.bin"
    secret.write_bytes(b"backup key")
    r = vault_cli("enroll", "--client", client_json, "--state", str(tmp_path / "e.json"),
                  "--user", "u", "--secret-file", str(secret),
                  env={"VAULT_RECOVERY_CODE": "code"})
    assert r.returncode == 6, r.stderr
    with without_freshness():
        assert fresh_client().verify_fleet().epoch == 1

    # the operator's trust file again: clients proceed
    assert vault_cli("fleet", "publish", "--fleet", cl.dir, "--operator", op).returncode == 0
    assert fresh_client().verify_fleet().epoch == 3


def _plant(node_dir: str, data: bytes) -> None:
    tmp = os.path.join(node_dir, TRUST_FILE + ".planted")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(node_dir, TRUST_FILE))


def _epoch(api: str) -> int:
    status, body = wire.call(api, "GET", "/v1/trust", timeout=2, channel=CH.UNPINNED)
    return B.Bundle.from_canonical(body["bundle"]).epoch if status == 200 else 0
