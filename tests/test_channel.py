"""The client channel: TLS 1.3 to every node, the server pinned to its fleet's CA.

* a client pinning another key sends nothing (a recording TLS server, and a
  real node whose counters do not move);
* a real node does not speak plain HTTP;
* an observer on the wire (a relay recording every byte) sees no user id,
  KE1 or path -- and, as the control, does see them on a fleet made with
  ``--insecure-http``, which works end to end.
"""
import dataclasses
import json
import os
import socket
import threading

import pytest
from conftest import free_base_port, vault_cli

from vault_raft import client as C
from vault_raft.api import channel as CH
from vault_raft.api import http as wire
from vault_raft.crypto import opaque
from vault_raft.fleet.config import ConfigError, FleetInfo, NodeConfig
from vault_raft.fleet.create import init_fleet
from vault_raft.fleet.tenants import local_token_source
from vault_raft.ops.cluster import LocalCluster, wait_until
from vault_raft.raft.pki import issue_node_cert, make_ca
from vault_raft.trust import bundle as B


def _pki(directory, fleet_id="f1", cert_fleet=None):
    """A fleet CA (DER) and a node certificate it issued (files), naming
    ``cert_fleet`` (default: the same fleet)."""
    ca_key, ca_cert = make_ca(fleet_id)
    key, cert = issue_node_cert(ca_key, ca_cert, cert_fleet or fleet_id, "n1", "127.0.0.1:1")
    os.makedirs(directory, exist_ok=True)
    paths = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    for path, data in zip(paths, (cert, key), strict=True):
        with open(path, "wb") as f:
            f.write(data)
    return CH.ca_der_from_pem(ca_cert), paths


class RecordingTlsServer:
    """Accepts TLS 1.3 connections with a given certificate and records, per
    connection, whether the handshake completed and every application byte
    that arrived after it (until the peer closes or goes quiet)."""

    def __init__(self, cert_file, key_file):
        self.ctx = CH.server_context(cert_file, key_file)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[dict] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            rec: dict = {"handshake": False, "data": b""}
            self.conns.append(rec)
            raw.settimeout(1.0)
            try:
                tls = self.ctx.wrap_socket(raw, server_side=True)
                rec["handshake"] = True
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    rec["data"] += chunk
            except OSError:
                pass
            finally:
                raw.close()

    @property
    def app_bytes(self) -> bytes:
        return b"".join(c["data"] for c in self.conns)

    def close(self):
        self._stop = True
        self._thread.join(5)
        self.sock.close()


class Relay:
    """A TCP relay to ``target`` that records every byte in both directions."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._stop = False
        self._threads = [threading.Thread(target=self._run, daemon=True)]
        self._threads[0].start()

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _run(self):
        while not self._stop:
            try:
                a, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            b = socket.create_connection(self.target, timeout=5)
            for src, dst in ((a, b), (b, a)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    def close(self):
        self._stop = True
        self.sock.close()
        for t in self._threads:
            t.join(5)


def _fleet(fleet_id, ca_der, url) -> FleetInfo:
    from vault_raft.crypto.ksf import IDENTITY_KSF
    from vault_raft.fleet.config import NodeInfo, opaque_context
    return FleetInfo(fleet_id, opaque_context(fleet_id), bytes(32), bytes(32), IDENTITY_KSF, 10,
                     (NodeInfo("n1", url),), ca_der)


# ------------------------------------------------------- no server needed

@pytest.mark.parametrize("case", ["other CA", "other fleet named", "positive control"])
def test_a_client_pinning_another_key_sends_nothing(tmp_path, case):
    """The server's certificate is checked before the request is written; on a
    mismatch the server receives not one application byte."""
    ca_a, (cert, key) = _pki(str(tmp_path / "a"), "f1",
                             cert_fleet="f2" if case == "other fleet named" else None)
    ca_b, _ = _pki(str(tmp_path / "b"), "f1")  # same fleet id, another CA key
    pin = ca_b if case == "other CA" else ca_a
    srv = RecordingTlsServer(cert, key)
    try:
        cli = C.Client(_fleet("f1", pin, srv.url), timeout=2, request_timeout=2)
        if case == "positive control":
            # the right pin: the request goes out (and the recorder sees it)
            with pytest.raises(OSError):
                wire.call(srv.url, "POST", "/v1/recover/start", {"user": b"alice"}, 2,
                          cli.channel)
            assert b"POST /v1/recover/start" in srv.app_bytes
            return
        with pytest.raises(C.Untrusted) as ei:
            cli.recover("alice", "a recovery code")
        assert ei.value.reason is B.WrongChannelKey and ei.value.exit_code == 6
        assert "nothing was sent" in str(ei.value)
        wait_until(lambda: srv.conns, 5, what="the client to connect")
        assert srv.app_bytes == b"", "application data reached a server the client does not trust"
    finally:
        srv.close()


def test_the_pinned_ca_is_the_only_trust_anchor(tmp_path):
    ca, _ = _pki(str(tmp_path))
    ch = CH.Channel("f1", ca)
    assert len(ch.ctx.get_ca_certs()) == 1  # no Web PKI roots
    assert ch.ctx.minimum_version.name == "TLSv1_3"
    with pytest.raises(ValueError, match="needs a channel"):
        CH.connection("https://127.0.0.1:1", 1, None)
    with pytest.raises(wire.WireError):
        wire.call("https://127.0.0.1:1", "GET", "/v1/status")


def test_node_config_serves_tls_by_default(tmp_path):
    d = str(tmp_path / "f")
    init_fleet(d, 3, base_port=free_base_port(3))
    p = os.path.join(d, "n1", "node.json")
    assert NodeConfig.load(os.path.join(d, "n1")).api_ssl_context() is not None
    cfg = json.load(open(p))
    del cfg["api_tls"]  # a node directory from before the field: TLS (its files exist)
    json.dump(cfg, open(p, "w"))
    assert NodeConfig.load(os.path.join(d, "n1")).api_ssl_context() is not None
    os.unlink(os.path.join(d, "n1", "tls.key"))
    with pytest.raises(ConfigError, match="api_tls"):
        NodeConfig.load(os.path.join(d, "n1")).api_ssl_context()
    cfg["api_tls"] = False
    json.dump(cfg, open(p, "w"))
    assert NodeConfig.load(os.path.join(d, "n1")).api_ssl_context() is None
    info = FleetInfo.load(os.path.join(d, "fleet.json"))
    assert all(n.api.startswith("https://") for n in info.nodes) and info.channel_ca


def test_a_fleet_json_from_before_the_channel_is_read_with_tls(tmp_path):
    d = str(tmp_path / "f")
    path = init_fleet(d, 3, base_port=free_base_port(3))
    new = FleetInfo.load(path)
    old = json.load(open(path))
    del old["channel_ca"]
    for n in old["nodes"]:
        n["api"] = n["api"].replace("https://", "http://")
    json.dump(old, open(path, "w"))
    assert FleetInfo.load(path) == new  # the CA from ca.crt; the URLs are https
    entry = new.to_entry("current")
    assert entry.channel_ca == new.channel_ca
    assert FleetInfo.from_entry(entry).channel_ca == new.channel_ca


def test_fleet_init_insecure_http_writes_plain_urls(tmp_path):
    d = str(tmp_path / "f")
    init_fleet(d, 3, base_port=free_base_port(3), api_tls=False)
    info = FleetInfo.load(os.path.join(d, "fleet.json"))
    assert all(n.api.startswith("http://") for n in info.nodes)
    assert json.load(open(os.path.join(d, "n2", "node.json")))["api_tls"] is False


# ----------------------------------------------------------- real nodes

def _capture_ke1(monkeypatch) -> list:
    seen = []
    start = opaque.ClientLogin.start

    def recording(*a, **k):
        login, ke1 = start(*a, **k)
        seen.append(ke1)
        return login, ke1
    monkeypatch.setattr(opaque.ClientLogin, "start", staticmethod(recording))
    return seen


@pytest.mark.cluster
def test_real_nodes_speak_only_tls_and_an_observer_sees_no_plaintext(cluster_factory,
                                                                     monkeypatch, tmp_path):
    cl = cluster_factory(max_attempts=5)
    fleet = FleetInfo.load(os.path.join(cl.dir, "fleet.json"))
    n1 = cl.ids[0]
    host, port = fleet.nodes[0].api.split("//")[1].split(":")

    # (b) plain HTTP gets no HTTP answer: the node only speaks TLS
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(4096)
        except OSError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer[:80]
    with pytest.raises(OSError):  # the connection is dropped without an answer
        wire.call(f"http://{host}:{port}", "GET", "/v1/status", timeout=3)

    # (c) through a recording relay: enroll, a wrong guess, a recovery
    ke1s = _capture_ke1(monkeypatch)
    relay = Relay((host, int(port)))
    try:
        cli = C.Client(fleet, nodes=[relay.url("https")], timeout=10,
                       token=local_token_source(cl.dir, fleet.fleet_id))
        cli.enroll("alice-observed", "the right code", b"the secret of alice")
        with pytest.raises(C.WrongCode):
            cli.recover("alice-observed", "a wrong code")
        assert cli.recover("alice-observed", "the right code").secret == b"the secret of alice"
    finally:
        relay.close()
    seen = bytes(relay.seen)
    assert len(ke1s) == 2 and len(seen) > 2000
    for secret in [b"alice-observed", b"/v1/", b"the secret of alice", b"attempts_left",
                   b"msgpack"] + ke1s:
        assert secret not in seen, f"{secret[:20]!r} crossed the wire in clear"

    # (a) on a real node: a client pinning another CA is refused before it sends
    # anything, and the node counts nothing
    other_ca, _ = _pki(str(tmp_path / "other"), fleet.fleet_id)
    impostor_pin = C.Client(dataclasses.replace(fleet, channel_ca=other_ca),
                            nodes=[fleet.nodes[0].api], timeout=3)
    before = cl.status(n1)["stats"]
    with pytest.raises(C.Untrusted) as ei:
        impostor_pin.recover("alice-observed", "a wrong code")
    assert ei.value.reason is B.WrongChannelKey
    assert cl.status(n1)["stats"] == before
    with pytest.raises(C.WrongCode) as wc:  # the refused attempt was not counted
        C.Client(fleet, nodes=[fleet.nodes[0].api],
                 token=local_token_source(cl.dir, fleet.fleet_id)).recover("alice-observed",
                                                                           "wrong again")
    assert wc.value.attempts_left == 4  # 5 - this one (the recovery above reset the count)


@pytest.mark.cluster
def test_insecure_http_opt_in_works_end_to_end(tmp_path, monkeypatch):
    """``fleet init --insecure-http``: plain HTTP, by the CLI and the library;
    the relay (the control for the test above) now reads user ids and KE1."""
    d = str(tmp_path / "f")
    r = vault_cli("fleet", "init", "--dir", d, "--base-port", str(free_base_port(3)),
                  "--insecure-http")
    assert r.returncode == 0 and "PLAIN HTTP" in r.stderr, r.stderr
    cl = LocalCluster(d)
    try:
        cl.start()
        cl.wait_leader(30)
        cl.wait_healthy(timeout=30)
        fleet_json = os.path.join(d, "fleet.json")
        secret = tmp_path / "s"
        secret.write_bytes(b"bob's secret")
        assert vault_cli("enroll", "--fleet", fleet_json, "--user", "bob", "--secret-file",
                         str(secret), stdin="bob code\n").returncode == 0
        r = vault_cli("recover", "--fleet", fleet_json, "--user", "bob", "--out", "-",
                      stdin="bob code\n")
        assert r.returncode == 0 and r.stdout == "bob's secret", r.stderr
        fleet = FleetInfo.load(fleet_json)
        host, port = fleet.nodes[0].api.split("//")[1].split(":")
        ke1s = _capture_ke1(monkeypatch)
        relay = Relay((host, int(port)))
        try:
            with pytest.raises(C.WrongCode):
                C.Client(fleet, nodes=[relay.url("http")],
                         token=local_token_source(d, fleet.fleet_id)).recover("bob", "wrong")
        finally:
            relay.close()
        assert b"bob" in relay.seen and ke1s[0] in relay.seen and b"/v1/recover" in relay.seen
        assert b"PLAIN HTTP" in open(os.path.join(d, "n1", "node.log"), "rb").read()
    finally:
        cl.stop(timeout=5)
        assert not cl.running()
