"""The trusted client refuses a fleet it cannot authenticate -- before it sends
anything derived from the recovery code (issue 6, acceptance 1).

A fake node (a real HTTPS server in this process, with a fleet certificate)
serves the trust answer each test chooses and records every request it
receives; a positive control shows that a verified bundle does lead to a
code-derived request being recorded.
"""
import dataclasses
import http.server
import json
import os
import tempfile
import threading

import pytest

from vault_raft import client as C
from vault_raft.api import binding as P
from vault_raft.api.channel import ca_der_from_pem, server_context
from vault_raft.crypto import seal as S
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.crypto.opaque import ServerSetup
from vault_raft.raft.pki import issue_node_cert, make_ca
from vault_raft.trust import bundle as B
from vault_raft.trust.mirror import LogMirror
from vault_raft.trust.witness import WitnessLog

NOW = 1_800_000_000


def fleet_pki(directory: str, fleet_id: str = "f1") -> tuple[bytes, str, str]:
    """A fleet CA and one node certificate: (CA DER, cert file, key file)."""
    ca_key, ca_cert = make_ca(fleet_id)
    key, cert = issue_node_cert(ca_key, ca_cert, fleet_id, "n1", "127.0.0.1:1")
    paths = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    for path, data in zip(paths, (cert, key), strict=True):
        with open(path, "wb") as f:
            f.write(data)
    return ca_der_from_pem(ca_cert), *paths


class FakeNode:
    """Serves ``self.trust`` at GET /v1/trust over TLS with a node certificate of
    fleet f1 (``self.ca``: its CA); records every request."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.ca, cert, key = fleet_pki(self._tmp.name)
        self.trust: dict | None = None
        self.requests: list[tuple[str, str]] = []
        node = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, obj):
                data = P.pack(obj)
                self.send_response(status)
                self.send_header("Content-Type", P.CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                node.requests.append(("GET", self.path))
                if self.path.startswith("/v1/trust") and node.trust is not None:
                    self._send(200, node.trust)
                else:
                    self._send(404, {"error": "not_found", "message": "nothing"})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                node.requests.append(("POST", self.path))
                self._send(503, {"error": "unavailable", "message": "fake", "proposed": False})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.socket = server_context(cert, key).wrap_socket(self.server.socket,
                                                                   server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def posts(self):
        return [p for m, p in self.requests if m == "POST"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self._tmp.cleanup()


class World:
    def __init__(self, tmp_path, node: FakeNode):
        self.tmp = tmp_path
        self.node = node
        self.op_sk, self.op_pk = B.new_signing_key()
        self.w_sk, self.w_pk = B.new_signing_key()
        self.witness = WitnessLog(str(tmp_path / "witness.log"), self.w_sk)
        self.witness.registry.add(self.op_pk)
        _, enroll_pk = S.hpke_keypair()
        self.entry = B.FleetEntry("f1", "current", ServerSetup.generate().public_key, enroll_pk,
                                  tuple(sorted(IDENTITY_KSF.to_dict().items())), 10, (node.url,),
                                  channel_ca=node.ca)
        cfg = {"version": 1, "namespace": "acme", "operator_key": self.op_pk.hex(),
               "witness_key": self.w_pk.hex(), "endpoints": [node.url]}
        self.config = str(tmp_path / "client.json")
        with open(self.config, "w") as f:
            json.dump(cfg, f)
        self.state = str(tmp_path / "state.json")

    def bundle(self, epoch, na=NOW + 3600, entry=None, namespace="acme"):
        return B.Bundle(namespace, epoch, (entry or self.entry,), NOW - 60, na)

    def publish(self, b: B.Bundle, op_sk=None) -> dict:
        """Co-sign and log ``b``; returns its signed parts (no proofs yet)."""
        canon = b.canonical()
        sig = (op_sk or self.op_sk).sign(canon)
        st, wsig, idx = self.witness.cosign(canon, sig, self.op_pk, NOW)
        return {"bundle": canon, "operator_sig": sig, "statement": st, "witness_sig": wsig,
                "leaf_index": idx}

    def mirror(self, witness=None, size=1000, ts=NOW) -> LogMirror:
        w = witness or self.witness
        statements, sth, sig = w.page(0, size, ts, "acme")
        return LogMirror.from_statements(w.public_key, statements, sth, sig)

    def serve(self, signed: dict, mirror: LogMirror | None = None, since: int | None = None):
        m = mirror or self.mirror()
        since = B.TrustState.load(self.state).tree_size if since is None else since
        incl, cons = m.proofs(signed["leaf_index"], since)
        self.node.trust = dict(signed, inclusion=incl, consistency=cons, sth=m.sth,
                               sth_sig=m.sth_sig)

    def client(self) -> C.TrustedClient:
        return C.TrustedClient(self.config, self.state, timeout=1.0, request_timeout=1.0,
                               clock=lambda: NOW)


@pytest.fixture
def world(tmp_path):
    node = FakeNode()
    w = World(tmp_path, node)
    yield w
    w.witness.close()
    node.close()


def _refused(w: World, reason: type) -> None:
    """The recovery attempt stops with the specific error; nothing was POSTed."""
    with pytest.raises(C.Untrusted) as ei:
        w.client().recover("alice", "a recovery code")
    assert ei.value.reason is reason, ei.value
    assert ei.value.exit_code == 6
    assert w.node.posts == [], "a recovery-code-derived message was sent"


def test_positive_control_a_verified_bundle_lets_the_recovery_start(world):
    world.serve(world.publish(world.bundle(1)))
    with pytest.raises(C.Unavailable):  # the fake node answers 503 to the KE1
        world.client().recover("alice", "a recovery code")
    assert "/v1/recover/start" in world.node.posts  # the recorder does see such messages
    assert B.TrustState.load(world.state).epochs["acme"][0] == 1


def test_bad_operator_signature(world):
    signed = world.publish(world.bundle(1))
    signed["operator_sig"] = B.new_signing_key()[0].sign(signed["bundle"])
    world.serve(signed)
    _refused(world, B.BadOperatorSignature)


def test_bad_witness_signature(world):
    signed = world.publish(world.bundle(1))
    signed["witness_sig"] = bytes([signed["witness_sig"][0] ^ 1]) + signed["witness_sig"][1:]
    world.serve(signed)
    _refused(world, B.BadWitnessSignature)


def test_tree_head_signed_by_another_witness(world):
    world.serve(world.publish(world.bundle(1)))
    other_sk, _ = B.new_signing_key()
    world.node.trust["sth_sig"] = other_sk.sign(world.node.trust["sth"])
    _refused(world, B.BadWitnessSignature)


def test_expired_bundle(world):
    world.serve(world.publish(world.bundle(1, na=NOW - 1)))
    _refused(world, B.BundleExpired)


def test_bundle_missing_from_the_witness_log(world):
    world.publish(world.bundle(1, namespace="other"))
    signed = world.publish(world.bundle(1))
    # a genuine, signed tree head -- of the log before this bundle was added
    m = world.mirror(size=1)
    signed["leaf_index"] = 0
    world.serve(signed, mirror=m)
    _refused(world, B.NotInLog)


def test_forked_log(world):
    world.serve(world.publish(world.bundle(1)))
    world.client().verify_fleet()  # the client has seen the genuine log (size 1)
    # a second witness history, signed with the same witness key, that rewrote entry 0
    fork = WitnessLog(str(world.tmp / "fork.log"), world.w_sk)
    evil = B.FleetEntry("f1", "current", ServerSetup.generate().public_key,
                        world.entry.enroll_key, world.entry.ksf, 10, world.entry.endpoints,
                        channel_ca=world.entry.channel_ca)
    for b in (world.bundle(1, entry=evil), world.bundle(2, entry=evil)):
        canon = b.canonical()
        st, wsig, idx = fork.cosign(canon, world.op_sk.sign(canon), world.op_pk, NOW)
    signed = {"bundle": canon, "operator_sig": world.op_sk.sign(canon), "statement": st,
              "witness_sig": wsig, "leaf_index": idx}
    world.serve(signed, mirror=world.mirror(fork))
    fork.close()
    _refused(world, B.ForkedLog)


def test_rolled_back_tree_head(world):
    first = world.publish(world.bundle(1))
    m1 = world.mirror()
    world.serve(world.publish(world.bundle(2)))
    world.client().verify_fleet()  # size 2 seen
    world.serve(first, mirror=m1, since=0)  # an old, genuinely signed head without a proof
    _refused(world, B.ForkedLog)


def test_replayed_older_bundle(world):
    old = world.publish(world.bundle(1))
    world.serve(world.publish(world.bundle(2)))
    assert world.client().verify_fleet().epoch == 2
    world.serve(old)  # epoch 1, with valid proofs against the current log
    _refused(world, B.ReplayedBundle)


def test_a_lagging_node_with_a_consistent_older_head_is_accepted(world):
    signed = world.publish(world.bundle(1))
    lag = world.mirror()  # a node whose copy of the log stops at size 1
    world.publish(world.bundle(1, namespace="other"))
    world.publish(world.bundle(1, namespace="other2"))
    full = world.mirror()
    world.serve(signed, mirror=full)
    world.client().verify_fleet()  # size 3 seen
    incl, _ = lag.proofs(0, 0)
    world.node.trust = dict(signed, sth=lag.sth, sth_sig=lag.sth_sig, inclusion=incl,
                            consistency=full.tree.consistency_proof(1))
    assert world.client().verify_fleet().epoch == 1  # proven a prefix of what was seen
    assert B.TrustState.load(world.state).tree_size == 3  # and the client never moves back
    world.node.trust["consistency"] = []
    _refused(world, B.ForkedLog)  # without the proof it is a rollback


def test_malformed_trust_answer(world):
    world.node.trust = {"bundle": b"x"}
    _refused(world, B.BundleMalformed)


# ------------------------------------------------------- the pinned channel

def test_a_v1_bundle_verifies_but_its_fleet_is_not_used_unpinned(world):
    """A bundle from before channel keys (v1) still verifies; the client then
    refuses to talk to its fleet, since it could not authenticate the channel."""
    v1 = dataclasses.replace(world.entry, channel_ca=b"")
    world.serve(world.publish(world.bundle(1, entry=v1)))
    b = world.client().verify_fleet()
    assert b.canonical()[:30].find(B.BUNDLE_V1.encode()) >= 0
    _refused(world, B.UnpinnedChannel)


def test_a_node_whose_certificate_is_not_the_pinned_fleets_gets_nothing(world, tmp_path):
    """The bundle pins another CA (same fleet id, another key): the node's TLS
    certificate does not chain to it, so not even the request line is sent."""
    other_ca, _, _ = fleet_pki(str(tmp_path))
    entry = dataclasses.replace(world.entry, channel_ca=other_ca)
    world.serve(world.publish(world.bundle(1, entry=entry)))
    _refused(world, B.WrongChannelKey)
    assert [p for _, p in world.node.requests if not p.startswith("/v1/trust")] == []


def test_a_fleet_listing_plain_http_endpoints_is_refused(world):
    entry = dataclasses.replace(world.entry, endpoints=("http://127.0.0.1:9",))
    world.serve(world.publish(world.bundle(1, entry=entry)))
    _refused(world, B.UnpinnedChannel)


# ------------------------------------------------- lagging nodes, failover

def test_a_lagging_node_makes_the_client_ask_another_before_declaring_a_fork(world):
    """A node whose copy of the log lags answers a smaller head and no proof:
    the client tries the next node, which is up to date; only when every node
    lags is it reported as a fork (exit 6).  Nothing is POSTed either way."""
    signed = world.publish(world.bundle(1))
    lag = world.mirror()  # a copy of the log that stops at size 1
    world.publish(world.bundle(1, namespace="other"))
    world.serve(signed)
    world.client().verify_fleet()  # size 2 seen
    assert B.TrustState.load(world.state).tree_size == 2
    up_to_date = FakeNode()
    try:
        up_to_date.trust = dict(world.node.trust)  # the full log, proof from size 2
        cfg = json.load(open(world.config))
        cfg["endpoints"] = [world.node.url, up_to_date.url]
        json.dump(cfg, open(world.config, "w"))
        incl, _ = lag.proofs(0, 0)
        world.node.trust = dict(signed, sth=lag.sth, sth_sig=lag.sth_sig, inclusion=incl,
                                consistency=[])
        assert world.client().verify_fleet().epoch == 1
        asked = [p for _, p in world.node.requests if p.startswith("/v1/trust")]
        assert asked[-1] == "/v1/trust?since=2"  # the lagging node was asked first...
        assert up_to_date.requests[-1] == ("GET", "/v1/trust?since=2")  # ...then the next
        # every node lags: a fork as far as this client can tell
        up_to_date.trust = dict(world.node.trust)
        with pytest.raises(C.Untrusted) as ei:
            world.client().recover("alice", "a recovery code")
        assert ei.value.reason is B.ForkedLog and ei.value.exit_code == 6
        assert "LaggingLog" in str(ei.value) and up_to_date.url in str(ei.value)
        assert world.node.posts == [] and up_to_date.posts == []
    finally:
        up_to_date.close()


def test_a_superseded_bundle_is_skipped_and_refused_without_saved_state(world):
    """A client with no state: a node serving epoch 1 while the witness's head
    names epoch 2 is skipped; when it is the only node, exit 6."""
    old = world.publish(world.bundle(1, na=NOW + 30 * 86400))
    world.publish(world.bundle(2))
    world.serve(old, since=0)  # genuine proofs under the current head (which names epoch 2)
    _refused(world, B.SupersededBundle)
    # the head from before epoch 2 would do -- until it is older than the client accepts
    before = world.mirror(size=1)
    world.serve(old, mirror=before, since=0)
    assert world.client().verify_fleet().epoch == 1
    os.remove(world.state)
    late = C.TrustedClient(world.config, world.state, timeout=1.0, request_timeout=1.0,
                           clock=lambda: NOW + B.MAX_HEAD_AGE + 1)
    with pytest.raises(C.Untrusted) as ei:
        late.verify_fleet()
    assert ei.value.reason is B.StaleTreeHead


def test_a_v1_tree_head_is_refused_clearly(world):
    """A node or witness from before tree head v2 serves heads without the
    namespace's newest epoch: the client cannot tell whether the bundle is
    current, and says what must be upgraded."""
    signed = world.publish(world.bundle(1))
    statements, _, _ = world.witness.page(0, 1000, NOW)
    sth = B.tree_head_v1(world.witness.size, world.witness.tree.root(), NOW)
    m = LogMirror.from_statements(world.w_pk, statements, sth, world.w_sk.sign(sth))
    world.serve(signed, mirror=m)
    with pytest.raises(C.Untrusted) as ei:
        world.client().verify_fleet()
    assert ei.value.reason is B.StaleTreeHead and "upgraded" in str(ei.value)
