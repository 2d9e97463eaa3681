"""The Raft port under mutual TLS (issue 7, acceptance 1 and 2).

A real replica (n1 of a 3-node fleet, alone, so it stays a candidate) listens
with :class:`MtlsTransport`.  Test clients connect with or without fleet
certificates; a positive control shows that a genuine fleet certificate does
get a message delivered and answered, so each refusal below is meaningful.
"""
import json
import os
import pickle
import socket
import ssl
import struct
import time

import msgpack
import pysyncobj.utility as U
import pytest
from conftest import free_base_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from raft_tls import node_certs

from vault_raft.node.replica import VaultReplica
from vault_raft.ops.cluster import wait_until
from vault_raft.raft import frames as wire
from vault_raft.raft.pki import cert_hosts, issue_node_cert, make_ca, peer_identity
from vault_raft.raft.settings import RaftSettings
from vault_raft.raft.transport import TlsConfig

FLEET = "f00dfeed"


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.fixture
def pki(tmp_path):
    base = free_base_port(3)
    addrs = {f"n{i}": f"127.0.0.1:{base + i}" for i in (1, 2, 3)}
    ca_key, ca_cert, ca, files = node_certs(tmp_path, addrs, FLEET)
    return {"addrs": addrs, "ca": ca, "files": files, "ca_key": ca_key, "ca_cert": ca_cert,
            "tmp": tmp_path}


@pytest.fixture
def n1(pki):
    cfg = TlsConfig(FLEET, "n1", pki["ca"], pki["files"]["n1"][1], pki["files"]["n1"][0],
                    pki["addrs"])
    addrs = pki["addrs"]
    rep = VaultReplica(addrs["n1"], [addrs["n2"], addrs["n3"]], str(pki["tmp"] / "n1data"),
                       settings=RaftSettings(), tls=cfg)
    wait_until(rep.status, 10, what="n1's status")
    yield rep
    rep.destroy_synchronous()


def _tls_client(pki, cert=None, key=None, ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca or pki["ca"])
    if cert:
        ctx.load_cert_chain(cert, key)
    host, port = pki["addrs"]["n1"].rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=5)
    return ctx.wrap_socket(raw)


def _read_frame(s, timeout=5.0):
    """One frame, or None when the node closed the connection."""
    s.settimeout(timeout)
    buf = b""
    try:
        while len(buf) < 4:
            chunk = s.recv(4 - len(buf))
            if not chunk:
                return None
            buf += chunk
        n = struct.unpack(">I", buf)[0]
        body = b""
        while len(body) < n:
            chunk = s.recv(n - len(body))
            if not chunk:
                return None
            body += chunk
    except (ssl.SSLError, ConnectionError):
        return None
    return wire.decode(body)


def _closed(s, timeout=5.0) -> bool:
    """The node closes the connection (nothing more arrives but the close)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = _read_frame(s, deadline - time.monotonic())
        if msg is None:
            return True
    return False


def _vote_request(term):
    return wire.encode({"type": "request_vote", "term": term, "last_log_index": 10 ** 6,
                        "last_log_term": 10 ** 6})


def _as_node(pki, nid):
    key, cert = pki["files"][nid][0], pki["files"][nid][1]
    return _tls_client(pki, cert, key)


def _answer_to(s, term):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg = _read_frame(s, deadline - time.monotonic())
        if msg is None:
            return None
        if msg["type"] == "response_vote" and msg["term"] == term:
            return msg
    return None


def test_positive_control_a_fleet_certificate_gets_its_message_answered(pki, n1):
    s = _as_node(pki, "n2")
    s.sendall(_vote_request(99))
    assert _answer_to(s, 99) is not None  # delivered to Raft, answered on this connection
    assert n1.status()["term"] == 99
    s.close()


def test_a_peer_without_a_fleet_certificate_cannot_connect(pki, n1):
    # 1. no client certificate at all
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = _tls_client(pki)
        s.sendall(_vote_request(50))
        if _read_frame(s) is None:
            raise ConnectionError("closed")
    # 2. a certificate from another CA, naming a fleet node and its address
    other_key, other_ca = make_ca(FLEET)
    k, c = issue_node_cert(other_key, other_ca, FLEET, "n2", pki["addrs"]["n2"])
    tmp = pki["tmp"]
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = _tls_client(pki, _write(tmp / "x.crt", c), _write(tmp / "x.key", k))
        s.sendall(_vote_request(50))
        if _read_frame(s) is None:
            raise ConnectionError("closed")
    # 3. plain TCP speaking pysyncobj's own protocol
    host, port = pki["addrs"]["n1"].rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=5)
    raw.sendall(struct.pack("i", 12) + b"127.0.0.1:1\x00")
    raw.settimeout(5)
    try:
        raw.recv(100)  # a TLS alert or a close: either way the bytes never reach Raft
    except (TimeoutError, ConnectionError):
        pass
    raw.close()
    assert n1.status()["term"] < 50  # none of these reached Raft


def test_a_certificate_cannot_claim_another_nodes_address(pki, n1):
    # The CA issued "n2" a certificate for n3's address (a mis-issue): refused,
    # because the fleet config places n2 elsewhere.
    k, c = issue_node_cert(pki["ca_key"], pki["ca_cert"], FLEET, "n2", pki["addrs"]["n3"])
    tmp = pki["tmp"]
    s = _tls_client(pki, _write(tmp / "m.crt", c), _write(tmp / "m.key", k))
    s.sendall(_vote_request(77))
    assert _closed(s)
    assert n1.status()["term"] < 77
    # A genuine n2 certificate is n2, whatever the peer might claim: the answer
    # goes back to the connection the certificate authenticated.
    s = _as_node(pki, "n2")
    s.sendall(_vote_request(78))
    assert _answer_to(s, 78) is not None


def test_oversized_and_malformed_frames_are_dropped(pki, n1):
    s = _as_node(pki, "n3")
    s.sendall(struct.pack(">I", 0x7FFFFFFF))  # 2 GiB announced, nothing follows
    assert _closed(s, 3.0)  # closed on the header alone: nothing was buffered for it
    for bad in (b"\xc1" * 10,  # not msgpack
                msgpack.packb({"type": "request_vote", "term": "x"}),  # wrong type
                msgpack.packb({"type": "add", "node": "127.0.0.1:1"}),  # not on this wire
                msgpack.packb({"type": "request_vote", "term": 1, "last_log_index": 1,
                               "last_log_term": 1, "extra": 1})):  # unknown field
        s = _as_node(pki, "n3")
        s.sendall(struct.pack(">I", len(bad)) + bad)
        assert _closed(s), bad
    s = _as_node(pki, "n2")  # the node is unharmed
    s.sendall(_vote_request(55))
    assert _answer_to(s, 55) is not None


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_is_never_unpickled(pki, n1):
    marker = pki["tmp"] / "PWNED"
    _Marker.path = str(marker)
    evil = pickle.dumps(_Marker(), 2)
    # 1. a pickle as a whole frame
    s = _as_node(pki, "n2")
    s.sendall(struct.pack(">I", len(evil)) + evil)
    assert _closed(s)
    # 2. a pickle inside a log entry of an otherwise valid append_entries
    entry = bytes([0]) + pickle.dumps((0, (_Marker(),)), 2)
    body = msgpack.packb({"type": "append_entries", "term": 200, "commit_index": 5,
                          "prevLogIdx": 0, "prevLogTerm": 0, "entries": [[entry, 1, 200]]},
                         use_bin_type=True)
    s = _as_node(pki, "n2")
    s.sendall(struct.pack(">I", len(body)) + body)
    assert _closed(s)
    # 3. a pickle as a forwarded command (the leader would append it, then unpickle it)
    body = msgpack.packb({"type": "apply_command", "command": entry, "request_id": 1},
                         use_bin_type=True)
    s = _as_node(pki, "n2")
    s.sendall(struct.pack(">I", len(body)) + body)
    assert _closed(s)
    # 4. a snapshot-style large-entry transmission (pysyncobj would unpickle it)
    body = msgpack.packb({"type": "append_entries", "term": 201, "commit_index": 5,
                          "prevLogIdx": 0, "prevLogTerm": 0, "transmission": "finish",
                          "data": evil}, use_bin_type=True)
    s = _as_node(pki, "n2")
    s.sendall(struct.pack(">I", len(body)) + body)
    assert _closed(s)  # the node has decoded the frame and refused it: no need to wait
    assert not marker.exists()
    assert n1.status()["term"] < 200


def test_pysyncobj_utility_and_readonly_paths_are_unreachable(pki, n1):
    """pysyncobj's status/add/remove/transfer utility and readonly connections
    speak its own protocol; on the mTLS port they cannot even start."""
    util = U.TcpUtility(password=None, timeout=3)
    for cmd in (["status"], ["add", "127.0.0.1:1"], ["transfer", pki["addrs"]["n2"]]):
        with pytest.raises(U.UtilityException):
            util.executeCommand(pki["addrs"]["n1"], cmd)
    assert n1.status()["term"] < 1000


def _travels(command: bytes) -> bool:
    """Can this command cross the wire and come back as the same bytes?"""
    try:
        return wire.command_from_wire(wire.command_to_wire(command)) == command
    except wire.FrameError:
        return False


def test_commands_travel_as_data_and_come_back_byte_for_byte():
    ok = bytes([0]) + pickle.dumps((3, (b"command",)), 2)
    frame = wire.encode({"type": "apply_command", "command": ok, "request_id": 7})
    assert b"_codecs" not in frame  # no pickle on the wire
    assert wire.decode(frame[4:])["command"] == ok
    assert _travels(ok) and _travels(bytes([1]))
    for bad in (bytes([0]) + pickle.dumps((3, ("str",)), 2),
                bytes([0]) + pickle.dumps((3, (b"a", b"b")), 2),
                bytes([2]) + pickle.dumps(["add", "x", None], 2),  # membership change
                bytes([0]) + pickle.dumps((3, (b"x",)), 4),  # other protocol: not ours
                bytes([0]) + b"garbage"):
        assert not _travels(bad)


def test_a_three_node_mtls_cluster_commits(pki):
    reps = []
    try:
        for nid in ("n1", "n2", "n3"):
            cfg = TlsConfig(FLEET, nid, pki["ca"], pki["files"][nid][1], pki["files"][nid][0],
                            pki["addrs"])
            others = [a for n, a in pki["addrs"].items() if n != nid]
            reps.append(VaultReplica(pki["addrs"][nid], others, str(pki["tmp"] / f"{nid}d"),
                                     settings=RaftSettings(), tls=cfg))
        from vault_raft.core import machine as M
        leader = wait_until(lambda: next((r for r in reps if r.can_serve()), None), 20,
                            what="a leader over mTLS")
        results: list = []
        leader.propose(M.encode_command(M.BEGIN_ATTEMPT, user=b"u", attempt_id=os.urandom(16),
                                        now=1), lambda res, err: results.append(err))
        wait_until(lambda: results, 20, 0.01, what="the proposal's outcome")
        assert results == [0]
        wait_until(lambda: all(r.status()["last_applied"] >= leader.status()["last_applied"]
                               for r in reps), 20, what="the followers to apply over mTLS")
    finally:
        for r in reps:
            r.destroy_synchronous()


# ----------------------------------------------------------- the admin path

@pytest.mark.cluster
def test_admin_status_and_transfer_need_the_admin_key(cluster_factory, tmp_path):
    from conftest import vault_cli

    from vault_raft.api import http as W
    from vault_raft.node.admin import sign_request
    from vault_raft.trust.bundle import new_signing_key

    cl = cluster_factory(3)
    leader = cl.leader()
    # public status: health only; the signed admin status has the details
    public = W.call(cl.api[leader], "GET", "/v1/status", channel=cl.channel)[1]
    assert "records" not in public and "stats" not in public
    code, detail = cl.admin(leader, "status")
    assert code == 200 and "records" in detail and detail["transport"] == "mtls"
    # forged, replayed, or addressed to another node: refused
    forged = sign_request(new_signing_key()[0], cl.fleet.fleet_id, leader, "transfer")
    assert W.call(cl.api[leader], "POST", "/v1/admin", forged, channel=cl.channel)[0] == 401
    good = sign_request(cl._admin_sk, cl.fleet.fleet_id, leader, "status")
    assert W.call(cl.api[leader], "POST", "/v1/admin", good, channel=cl.channel)[0] == 200
    assert W.call(cl.api[leader], "POST", "/v1/admin", good,
                  channel=cl.channel)[0] == 401  # replay
    other = next(n for n in cl.ids if n != leader)
    assert W.call(cl.api[other], "POST", "/v1/admin",
                  sign_request(cl._admin_sk, cl.fleet.fleet_id, leader, "status"),
                  channel=cl.channel)[0] == 401
    stale = sign_request(cl._admin_sk, cl.fleet.fleet_id, leader, "status",
                         now_ms=int(time.time() * 1000) - 120_000)
    assert W.call(cl.api[leader], "POST", "/v1/admin", stale, channel=cl.channel)[0] == 401
    # the transfer itself, through the CLI
    r = vault_cli("cluster", "transfer", "--dir", cl.dir, "--to", other)
    assert r.returncode == 0, r.stderr
    assert cl.wait_leader(10) == other


def test_node_certificate_names_its_advertised_host():
    """A node certificate binds the node's identity to its own address: the
    Raft URI SAN plus an IP SAN (an IP literal) or a DNS SAN (a name)."""
    ca_key, ca_cert = make_ca(FLEET)
    _, cert = issue_node_cert(ca_key, ca_cert, FLEET, "n2", "10.213.7.2:7102")
    assert cert_hosts(cert) == ["10.213.7.2"]
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    assert peer_identity(der) == (FLEET, "n2", "10.213.7.2:7102")
    _, cert = issue_node_cert(ca_key, ca_cert, FLEET, "n3", "vault-3.example:7103",
                              host="vault-3.example")
    san = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vault-3.example"]
    assert san.get_values_for_type(x509.IPAddress) == []


def _node_json(tmp_path, **extra):
    d = {"node_id": "n1", "fleet_id": FLEET, "raft_addr": "127.0.0.1:1", "partners": [],
         "api_host": "127.0.0.1", "api_port": 2, **extra}
    (tmp_path / "node.json").write_text(json.dumps(d))
    return str(tmp_path)


def test_mtls_is_the_only_raft_transport(tmp_path):
    from vault_raft.fleet.config import ConfigError, NodeConfig
    assert NodeConfig.load(_node_json(tmp_path)).transport == "mtls"  # no field: mTLS
    assert NodeConfig.load(_node_json(tmp_path, transport="mtls")).transport == "mtls"
    with pytest.raises(ConfigError, match="mutual TLS is the only Raft transport"):
        NodeConfig.load(_node_json(tmp_path, transport="plain"))
    with pytest.raises(TypeError, match="mutual TLS"):
        VaultReplica("127.0.0.1:1", [], str(tmp_path / "data"))  # no TlsConfig, no transport
