"""Raft membership changes over the mTLS transport (issue 19, node replacement).

Entries travel as validated strings and are rebuilt by pickling them (nothing
received is unpickled); a change removes the old node, revoking its
certificate, then adds the new one, pinning its certificate; the survivors
refuse the old certificate even though the fleet CA signed it, and a restart
(journal replay, or a snapshot) reproduces all of it.
"""
import os
import pickle
import socket
import ssl

import pytest
from conftest import free_base_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from raft_tls import node_certs, write_cert

from vault_raft.core import machine as M
from vault_raft.node.replica import VaultReplica
from vault_raft.ops.cluster import wait_until
from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft import frames as wire
from vault_raft.raft import membership as MB
from vault_raft.raft.pki import issue_node_cert
from vault_raft.raft.settings import RaftSettings
from vault_raft.raft.transport import TlsConfig

FLEET = "f00dfeed"
FP = "ab" * 32


def _fp(cert_path) -> str:
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return MB.cert_sha256(cert.public_bytes(serialization.Encoding.DER))


# ------------------------------------------------------------------ wire

def test_a_membership_entry_travels_as_strings_and_comes_back_byte_for_byte():
    entry = MB.entry_bytes(MB.Change("add", "127.0.0.2:7102", "n2", FP))
    assert entry[0] == 2
    assert MB.parse(entry) == MB.Change("add", "127.0.0.2:7102", "n2", FP)
    frame = wire.encode({"type": "append_entries", "term": 3, "commit_index": 1,
                         "prevLogIdx": 1, "prevLogTerm": 1, "entries": [(entry, 2, 3)]})
    got = wire.decode(frame[4:])
    assert got["entries"] == [(entry, 2, 3)]


@pytest.mark.parametrize("bad", [
    [2, "add", "127.0.0.2:7102", "n2"],  # short
    [2, "swap", "127.0.0.2:7102", "n2", FP],  # kind
    [2, "add", "127.0.0.2", "n2", FP],  # no port
    [2, "add", "127.0.0.2:99999", "n2", FP],  # port
    [2, "add", "h o s t:1", "n2", FP],
    [2, "add", "127.0.0.2:7102", "n2/../x", FP],
    [2, "add", "127.0.0.2:7102", "n2", "AB" * 32],  # not lower-case hex
    [2, "add", "127.0.0.2:7102", "n2", b"\x00" * 32],
    [True, "add", "127.0.0.2:7102", "n2", FP],
])
def test_malformed_membership_shapes_are_refused(bad):
    body = {"type": "append_entries", "term": 3, "commit_index": 1, "prevLogIdx": 1,
            "prevLogTerm": 1, "entries": [[bad, 2, 3]]}
    import msgpack
    with pytest.raises(wire.FrameError):
        wire.decode(msgpack.packb(body, use_bin_type=True))


def test_a_membership_change_is_never_forwarded():
    entry = MB.entry_bytes(MB.Change("rem", "127.0.0.1:7102", "n2", FP))
    with pytest.raises(wire.FrameError):
        wire.encode({"type": "apply_command", "command": entry, "request_id": 1})
    import msgpack
    body = {"type": "apply_command", "request_id": 1,
            "command": MB.Change("rem", "127.0.0.1:7102", "n2", FP).to_wire()}
    with pytest.raises(wire.FrameError):
        wire.decode(msgpack.packb(body, use_bin_type=True))


def test_a_pickled_object_in_a_membership_entry_is_not_built():
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    for obj in (["add", "a:1", "a:1", "n2", Evil()], ["add", "a:1", x509, "n2", FP]):
        try:
            data = bytes([2]) + pickle.dumps(obj, 2)
        except Exception:  # noqa: BLE001 -- a module does not pickle
            continue
        with pytest.raises(MB.MembershipError):
            MB.parse(data)
        with pytest.raises(wire.FrameError):
            wire.command_to_wire(data)


def _crafted_entry(middle: bytes) -> bytes:
    """``2 || pickle([str, X, Y, str, str])`` with X, Y given as raw pickle opcodes."""
    s = b"X" + len(b"add").to_bytes(4, "little") + b"add"
    return bytes([2]) + b"\x80\x02](" + s + middle + s + s + b"e."


def test_a_crafted_membership_entry_neither_recurses_nor_hangs_the_parser():
    # two deeply nested lists: comparing them before checking the types
    # recursed out of the parser (RecursionError, not a MembershipError)
    depth = 200_000
    nested = b"]" * depth + b"a" * (depth - 1)
    with pytest.raises(MB.MembershipError):
        MB.parse(_crafted_entry(nested + nested))
    # two distinct DAGs of shared sublists (memo references): comparing them
    # takes 2**60 steps
    def dag(memo0: int) -> bytes:
        out = b"]q" + bytes([memo0]) + b"0"  # BINPUT, then POP: only the memo keeps it
        for k in range(1, 60):
            out += b"](h" + bytes([memo0 + k - 1]) + b"h" + bytes([memo0 + k - 1]) + b"eq" \
                + bytes([memo0 + k]) + (b"0" if k < 59 else b"")
        return out
    with pytest.raises(MB.MembershipError):
        MB.parse(_crafted_entry(dag(0) + dag(100)))
    with pytest.raises(wire.FrameError):
        wire.command_to_wire(_crafted_entry(nested + nested))


def test_membership_state_applies_and_reverts():
    m = MB.Membership({"h:1": "n1", "h:2": "n2"})
    m.apply(MB.Change("rem", "h:2", "n2", FP))
    assert m.node_id("h:2") is None and FP in m.revoked
    new = "cd" * 32
    m.apply(MB.Change("add", "g:2", "n2", new))
    assert m.node_id("g:2") == "n2" and m.pins["n2"] == new
    m.apply(MB.Change("add", "g:2", "n2", new), reverse=True)
    assert m.node_id("g:2") is None and "n2" not in m.pins
    m.apply(MB.Change("rem", "h:2", "n2", FP), reverse=True)
    assert m.node_id("h:2") == "n2" and not m.revoked
    snap = MB.Membership()
    snap.load(m.to_dict())
    assert snap.to_dict() == m.to_dict()
    with pytest.raises(ValueError):
        snap.load({"ids": {"h:1": "n1"}, "pins": {}, "revoked": ["zz"]})


# ------------------------------------------------------ a live replacement

@pytest.fixture(params=["new address", "same address"])
def fleet(tmp_path, request):
    base = free_base_port(4)
    addrs = {f"n{i}": f"127.0.0.1:{base + i}" for i in (1, 2, 3)}
    # a new machine, or the same address (the disk was replaced): only the
    # revocation tells the old certificate from the new one then
    new_addr = f"127.0.0.1:{base + 4}" if request.param == "new address" else addrs["n2"]
    ca_key, ca_cert, ca, files = node_certs(tmp_path, addrs, FLEET)
    files["n2new"] = write_cert(tmp_path, "n2new",
                                *issue_node_cert(ca_key, ca_cert, FLEET, "n2", new_addr))
    # another CA-signed certificate for n2 at the new address: not the pinned one
    files["n2rogue"] = write_cert(tmp_path, "n2rogue",
                                  *issue_node_cert(ca_key, ca_cert, FLEET, "n2", new_addr))
    reps = {}

    def start(nid, peers, files_key=None, data=None):
        cfg = TlsConfig(FLEET, nid, ca, files[files_key or nid][1], files[files_key or nid][0],
                        peers)
        me = peers[nid]
        reps[data or nid] = VaultReplica(
            me, [a for n, a in peers.items() if n != nid], str(tmp_path / f"{data or nid}d"),
            settings=RaftSettings(compaction_min_entries=10 ** 6), tls=cfg)
        return reps[data or nid]

    yield {"addrs": addrs, "new": new_addr, "ca": ca, "files": files, "start": start,
           "reps": reps, "tmp": tmp_path}
    for r in reps.values():
        r.destroy_synchronous()


def _wait(cond, timeout, what):
    return wait_until(cond, timeout, what=what)


def _call(rep, start):
    out = []
    start(lambda res, err: out.append(err))
    _wait(lambda: out, 10, "the Raft thread's answer")
    return out[0]


def _commit(rep):
    return _call(rep, lambda cb: rep.propose(
        M.encode_command(M.BEGIN_ATTEMPT, user=b"u", attempt_id=os.urandom(16), now=1), cb))


def _leader(reps):
    return _wait(lambda: next((r for r in reps if r.can_serve() and r.status()["role"] ==
                               "leader"), None), 20, "a leader")


def _handshake_refused(addr, files, ca) -> bool:
    """Connect to ``addr`` with a node's certificate: True if the node closes
    the connection without a frame (refused), False if it keeps it open."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(files[1], files[0])
    host, port = addr.rsplit(":", 1)
    s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5))
    s.settimeout(3.0)
    try:
        s.sendall(wire.encode(wire.PING))
        data = s.recv(4)  # a ping from the node (1.5 s timeout / 4) or the close
        return data == b""
    except (ssl.SSLError, ConnectionError):
        return True
    except TimeoutError:
        return False
    finally:
        s.close()


def test_replacing_a_node_revokes_its_old_certificate_and_survives_a_restart(fleet):
    addrs, new = fleet["addrs"], fleet["new"]
    for nid in addrs:
        fleet["start"](nid, addrs)
    reps = fleet["reps"]
    old_fp, new_fp = _fp(fleet["files"]["n2"][1]), _fp(fleet["files"]["n2new"][1])
    # n2's disk died: it stops; the other two keep a majority
    reps.pop("n2").destroy_synchronous()
    leader = _leader(reps.values())
    assert _commit(leader) == 0
    # a positive control: before the change, n2's certificate is accepted
    survivor = next(r for r in reps.values() if r is not leader)
    survivor_addr = survivor.selfNode.id
    assert not _handshake_refused(survivor_addr, fleet["files"]["n2"], fleet["ca"])

    # one change at a time: remove the old node (revoking its certificate) ...
    assert _call(leader, lambda cb: leader.propose_membership(
        MB.Change("rem", addrs["n2"], "n2", old_fp), cb)) == 0
    assert addrs["n2"] not in leader.members()
    # the leader compacts its log past the removal: the new node learns it (and the
    # revocation) from the snapshot it is sent, not from the entry
    rem_index = leader.status()["last_applied"]
    assert _commit(leader) == 0 and _commit(leader) == 0
    leader.compact_now()
    _wait(lambda: leader.status()["log_start"] > rem_index, 20, "the leader's compaction")
    # ... then add the new one at its new address
    peers_new = dict(addrs, n2=new)
    fleet["start"]("n2", peers_new, files_key="n2new", data="n2new")
    assert _call(leader, lambda cb: leader.propose_membership(
        MB.Change("add", new, "n2", new_fp), cb)) == 0
    n2new = reps["n2new"]
    assert _commit(leader) == 0
    _wait(lambda: n2new.status()["last_applied"] >= leader.status()["last_applied"], 20,
          "the new node to catch up")
    _wait(lambda: all(sorted(r.members()) == sorted([addrs["n1"], new, addrs["n3"]])
                      for r in reps.values()), 10, "the membership on every node")
    assert n2new.membership.revoked == {old_fp}
    assert os.path.exists(n2new.snapshot_path)  # it caught up from the leader's snapshot

    # the survivors refuse the old certificate, and a CA-signed n2 certificate
    # that is not the pinned one; the new certificate is accepted
    assert _handshake_refused(survivor_addr, fleet["files"]["n2"], fleet["ca"])
    assert _handshake_refused(survivor_addr, fleet["files"]["n2rogue"], fleet["ca"])
    _wait(lambda: pso.transport(survivor).counts["refused"] >= 2, 5, "two refusals")

    # a restart of a survivor with its original config: the journal replays the changes
    nid = next(n for n, a in addrs.items() if a == survivor_addr)
    key = nid
    reps.pop(key).destroy_synchronous()
    again = fleet["start"](nid, addrs)
    _wait(lambda: sorted(again.members()) == sorted([addrs["n1"], new, addrs["n3"]])
          and again.membership.revoked, 20, "the replayed membership")
    assert again.membership.revoked == {old_fp} and again.membership.pins["n2"] == new_fp
    assert _handshake_refused(survivor_addr, fleet["files"]["n2"], fleet["ca"])
    _wait(lambda: again.status()["peers_connected"] == 2, 20, "the restarted node's peers")
    leader = _leader(reps.values())
    assert _commit(leader) == 0

    # and from a snapshot: compact, restart, the membership comes back from it
    again.compact_now()
    _wait(lambda: os.path.exists(again.snapshot_path), 20, "a snapshot")
    from vault_raft.storage.snapshot import read_snapshot
    _wait(lambda: "membership" in read_snapshot(again.snapshot_path), 20, "a snapshot")
    assert read_snapshot(again.snapshot_path)["membership"]["revoked"] == [old_fp]
    reps.pop(nid).destroy_synchronous()
    again = fleet["start"](nid, addrs)
    _wait(lambda: sorted(again.members()) == sorted([addrs["n1"], new, addrs["n3"]])
          and again.membership.revoked, 20, "the membership from the snapshot")
    assert again.membership.revoked == {old_fp}
    assert _handshake_refused(survivor_addr, fleet["files"]["n2"], fleet["ca"])


def test_a_restart_replays_the_revocation_even_if_the_hooks_are_installed_late(fleet,
                                                                               monkeypatch):
    """pysyncobj starts its tick thread inside ``SyncObj.__init__``, before the
    replica installs its hooks; a tick that applies the journal's committed
    entries before the membership hook is in place loses their revocations."""
    addrs = fleet["addrs"]
    for nid in addrs:
        fleet["start"](nid, addrs)
    reps = fleet["reps"]
    old_fp = _fp(fleet["files"]["n2"][1])
    reps.pop("n2").destroy_synchronous()
    leader = _leader(reps.values())
    assert _commit(leader) == 0  # pysyncobj takes a change once the leader's no-op is applied
    assert _call(leader, lambda cb: leader.propose_membership(
        MB.Change("rem", addrs["n2"], "n2", old_fp), cb)) == 0
    for _ in range(3):
        assert _commit(leader) == 0
    survivor = next(r for r in reps.values() if r is not leader)
    _wait(lambda: survivor.status()["last_applied"] >= leader.status()["last_applied"], 20,
          "the survivor to apply the removal")
    nid = next(n for n, a in addrs.items() if a == survivor.selfNode.id)
    reps.pop(nid).destroy_synchronous()

    from vault_raft.raft.membership_hooks import MembershipHooks
    install = MembershipHooks._install_membership_hooks

    def late(self):  # the main thread is descheduled for a while (a loaded host)
        import time
        time.sleep(0.6)
        install(self)
    monkeypatch.setattr(MembershipHooks, "_install_membership_hooks", late)
    again = fleet["start"](nid, addrs)
    _wait(lambda: addrs["n2"] not in again.members(), 20, "the replayed removal")
    _wait(lambda: again.membership.revoked == {old_fp}, 10, "the replayed revocation")
    assert again.membership.node_id(addrs["n2"]) is None


# ------------------------------------------------------ the admin request

def test_a_membership_request_is_not_replayed_across_a_restart(monkeypatch):
    """Nonces live in memory: a node that restarted within the skew window
    would take a captured ``member`` request again (e.g. the removal of n2
    at an address where the replacement n2 now runs)."""
    from cryptography.hazmat.primitives import serialization as S
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vault_raft.node import admin
    from vault_raft.node.admin import AdminAuthError, AdminVerifier, sign_request
    sk = Ed25519PrivateKey.generate()
    pk = sk.public_key().public_bytes(S.Encoding.Raw, S.PublicFormat.Raw)
    args = {"change": "rem", "node": "n2", "addr": "127.0.0.1:7102", "cert_sha256": FP}
    t0 = 1_800_000_000_000
    body = sign_request(sk, FLEET, "n1", "member", args, now_ms=t0)
    monkeypatch.setattr(admin.time, "time", lambda: t0 / 1000)
    before = AdminVerifier(pk, FLEET, "n1")
    assert before.verify(body, t0 + 1000) == ("member", args)
    with pytest.raises(AdminAuthError, match="replayed"):
        before.verify(body, t0 + 2000)
    monkeypatch.setattr(admin.time, "time", lambda: (t0 + 5000) / 1000)
    restarted = AdminVerifier(pk, FLEET, "n1")  # the node restarted
    with pytest.raises(AdminAuthError, match="before this node started"):
        restarted.verify(body, t0 + 6000)
    # a request signed after the start is taken; other operations keep the window
    fresh = sign_request(sk, FLEET, "n1", "member", args, now_ms=t0 + 5500)
    assert restarted.verify(fresh, t0 + 6000)[0] == "member"
    status = sign_request(sk, FLEET, "n1", "status", {}, now_ms=t0 + 4000)
    assert restarted.verify(status, t0 + 6000)[0] == "status"


def test_a_revocation_from_a_snapshot_closes_an_open_connection(fleet):
    """A snapshot that revokes a member address's certificate leaves the
    address in pysyncobj's cluster (replaced at the same address), so nothing
    drops the connection; the revocation itself must close it."""
    addrs = fleet["addrs"]
    for nid in ("n1", "n3"):
        fleet["start"](nid, addrs)
    reps = fleet["reps"]
    _leader(reps.values())
    n1, old_fp = reps["n1"], _fp(fleet["files"]["n2"][1])
    # the old n2 (its stolen disk) is connected to n1 ...
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(fleet["ca"])
    ctx.load_cert_chain(fleet["files"]["n2"][1], fleet["files"]["n2"][0])
    host, port = addrs["n1"].rsplit(":", 1)
    s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5))
    try:
        s.sendall(wire.encode(wire.PING))
        s.settimeout(3.0)
        assert s.recv(4) != b""  # a keepalive: the connection is open
        # ... when n1 installs a snapshot whose membership revokes its certificate
        state = n1.membership.to_dict()
        state["revoked"] = [old_fp]
        n1._raft_calls.put(lambda: n1.membership.load(state))
        _wait(lambda: old_fp in n1.membership.revoked, 5, "the snapshot's membership")

        def closed():  # a live peer: it pings (a silent one is dropped after 1.5 s)
            try:
                s.sendall(wire.encode(wire.PING))
                return s.recv(4096) == b""
            except (ssl.SSLError, ConnectionError):
                return True
            except TimeoutError:
                return False
        s.settimeout(0.5)
        _wait(closed, 8, "n1 to close the revoked certificate's connection")
    finally:
        s.close()
