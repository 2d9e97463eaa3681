"""The conformance vectors (docs/vectors/protocol-v1.json) are what the code makes.

* The generator, run again, writes the file byte for byte (the HPKE uploads,
  whose ephemeral keys ``cryptography`` draws itself, are kept while they still
  open: see vault_raft/ops/protocol_vectors.py).
* Without the file to keep them from, only the HPKE uploads and what carries
  them change: everything else is a function of the fixed inputs.
* The production code accepts every vector: the nodes' keystore opens the
  uploads, tickets and tokens, the node's proof check accepts the proofs, the
  client opens the secret box, a client verifies the bundle (with and without
  saved state) and the deployment record, and a node's tenant gate accepts the
  token.

tests/independent/ checks the same file against an implementation written from
docs/protocol.md alone.
"""
import json
import pathlib
import subprocess
import sys

import pytest

from vault_raft.api import binding as P
from vault_raft.api.channel import check_ca
from vault_raft.crypto import opaque
from vault_raft.crypto import seal as S
from vault_raft.fleet import tenants as T
from vault_raft.fleet.config import FleetInfo, opaque_context
from vault_raft.fleet.keystore import FileKeystore
from vault_raft.fleet.tenant_gate import Gate
from vault_raft.ops import protocol_vectors as V
from vault_raft.trust import bundle as B
from vault_raft.trust import deployment as D

FILE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "vectors" / "protocol-v1.json"
h = bytes.fromhex


@pytest.fixture(scope="module")
def vec():
    return json.loads(FILE.read_text(encoding="utf-8"))


def _flat(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _flat(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _flat(v, f"{path}[{i}]")
    else:
        yield path, x


def test_the_generator_writes_the_file_byte_for_byte(vec):
    assert V.render(V.build(vec)) == FILE.read_text(encoding="utf-8"), \
        "docs/vectors/protocol-v1.json is stale: run python -m vault_raft.ops.protocol_vectors"


def test_only_the_hpke_uploads_depend_on_randomness(vec):
    fresh = V.build(None)
    old, new = dict(_flat(vec)), dict(_flat(fresh))
    assert old.keys() == new.keys()
    differ = {k for k in old if old[k] != new[k]}
    wire = {i for i, w in enumerate(vec["wire"]) if w["endpoint"] == "POST /v1/enroll/finish"}
    allowed = {".enroll.upload.ciphertext", ".manage.change_secret_upload.ciphertext",
               ".manage.proofs[0].payload", ".manage.proofs[0].message",
               ".manage.proofs[0].proof"} | {f".wire[{i}].request" for i in wire}
    assert differ and differ <= allowed, differ - allowed
    ks = _keystore(fresh)
    for up in (fresh["enroll"]["upload"], fresh["manage"]["change_secret_upload"]):
        assert ks.open_upload(h(up["ciphertext"]), h(up["info"])) == h(up["plaintext"])


def test_the_command_line_checks_and_writes(tmp_path, vec):
    r = subprocess.run([sys.executable, "-m", "vault_raft.ops.protocol_vectors", "--check",
                        "--out", str(FILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    # without --out: the repository's docs/vectors/ file, from any working directory
    assert pathlib.Path(V.DEFAULT_PATH) == FILE
    r = subprocess.run([sys.executable, "-m", "vault_raft.ops.protocol_vectors", "--check"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and f"{FILE}: up to date" in r.stdout, r.stdout + r.stderr
    copy = tmp_path / "v.json"
    copy.write_text(FILE.read_text().replace('"format": 1', '"format": 0'))
    r = subprocess.run([sys.executable, "-m", "vault_raft.ops.protocol_vectors", "--check",
                        "--out", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "DIFFERS" in r.stdout
    r = subprocess.run([sys.executable, "-m", "vault_raft.ops.protocol_vectors", "--out",
                        str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and copy.read_text() == FILE.read_text()


def _keystore(vec) -> FileKeystore:
    f = vec["fleet"]
    o = f["opaque"]
    return FileKeystore(f["fleet_id"], h(o["oprf_seed"] + o["server_private_key"]
                                         + o["server_public_key"]),
                        bytes(32), h(f["token_key"]), h(f["enroll_key"]["private_key"]),
                        h(f["enroll_key"]["public_key"]), "x")


def test_the_nodes_accept_the_client_side_vectors(vec):
    ks = _keystore(vec)
    fid, user = vec["fleet"]["fleet_id"], vec["enroll"]["user"].encode()
    assert h(vec["fleet"]["context"]) == opaque_context(fid)
    en = vec["enroll"]
    # the upload opens with the enrollment key, under the info the node computes
    up = en["upload"]
    info = P.upload_info(fid, user, b"enroll", h(en["ticket"]["nonce"]))
    assert info.hex() == up["info"]
    assert ks.open_upload(h(up["ciphertext"]), info) == h(en["secret"])
    # the ticket is the node's: purpose, record key, nonce, credential identifier
    ticket = h(en["ticket"]["ticket"])
    purpose, rid, nonce, cred_id, _seq, expires = P.unpack(ks.open_ticket(ticket))
    assert (purpose, rid, nonce.hex(), cred_id.hex(), expires) == (
        "enroll", b"app\0" + user, en["ticket"]["nonce"], en["inputs"]["credential_identifier"],
        en["ticket"]["expires_ms"])
    assert opaque.server_registration_response(ks.opaque_setup(), h(en["registration_request"]),
                                               cred_id).hex() == en["registration_response"]
    assert opaque.check_registration_record(h(en["registration_record"]))
    # the recovery token carries the login state: KE3 verifies, the session key matches
    rr = vec["recover_right"]
    t_user, _attempt, _version, _exp, state = P.unpack(ks.open_token(h(rr["token"])))
    login = opaque.ServerLogin.from_bytes(state)
    assert t_user == b"app\0" + user
    assert opaque.server_login_finish(login, h(rr["KE3"])).hex() == rr["session_key"]
    with pytest.raises(opaque.OpaqueError):
        opaque.server_login_finish(login, bytes(64))
    # the secret box opens at the client
    box = vec["secret_box"]
    assert P.open_release(h(rr["session_key"]), user, h(rr["token"]),
                          h(box["secret_box"])) == h(en["secret"])
    # each proof passes the node's check (and fails for another op)
    m = vec["manage"]
    mk = S.session_subkey(login.session_key, P.MANAGE_KEY)
    assert mk.hex() == m["manage_key"]
    for p in m["proofs"]:
        msg = P.manage_message(p["op"], user, h(rr["token"]), h(p["payload"]), h(p["ticket"]))
        assert msg.hex() == p["message"]
        assert S.mac_ok(mk, msg, h(p["proof"]))
        other = "delete" if p["op"] != "delete" else "change_secret"
        assert not S.mac_ok(mk, P.manage_message(other, user, h(rr["token"]), h(p["payload"]),
                                                 h(p["ticket"])), h(p["proof"]))
    cs = m["change_secret_upload"]
    assert ks.open_upload(h(cs["ciphertext"]), P.upload_info(fid, user, b"change_secret",
                                                             h(rr["token"]))) == h(cs["plaintext"])
    t = P.unpack(ks.open_ticket(h(m["change_code"]["ticket"])))
    assert t[0] == "change_code" and t[3].hex() == m["change_code"]["inputs"][
        "credential_identifier"]


def test_a_client_verifies_the_trust_vectors(vec):
    tr = vec["trust"]
    reply = P.unpack(h(tr["trust_reply"]))
    op_pk, w_pk = h(tr["operator_key"]["public_key"]), h(tr["witness_key"]["public_key"])
    before = tr["client_state_before"]
    state = B.TrustState(before["tree_size"], h(before["tree_root"]), dict(before["epochs"]))
    bundle = B.verify(B.SignedBundle.from_wire(reply), op_pk, w_pk, state, tr["verify_at"],
                      tr["max_head_age"])
    after = tr["client_state_after"]
    assert (state.tree_size, state.tree_root.hex(), state.epochs) == (
        after["tree_size"], after["tree_root"], after["epochs"])
    # a new device (no saved state) accepts it as well, with the consistency proof ignored
    assert B.verify(B.SignedBundle.from_wire(dict(reply, consistency=[])), op_pk, w_pk,
                    B.TrustState(), tr["verify_at"]) == bundle
    # ... but not once the head is older than max_head_age
    with pytest.raises(B.StaleTreeHead):
        B.verify(B.SignedBundle.from_wire(reply), op_pk, w_pk, B.TrustState(),
                 tr["tree_head"]["timestamp"] + tr["max_head_age"] + 1)
    entry = bundle.current
    check_ca(entry.channel_ca, entry.fleet_id)
    info = FleetInfo.from_entry(entry)
    assert info.opaque_server_public_key.hex() == vec["fleet"]["opaque"]["server_public_key"]
    assert info.ksf.to_dict() == dict(vec["fleet"]["ksf"])
    dep = P.unpack(h(tr["deployment"]["reply"]))
    nodes = D.verify(dep["record"], dep["operator_sig"], op_pk, entry)
    assert [n["node"] for n in nodes] == ["n1", "n2", "n3"]


def test_a_node_accepts_the_tenant_token(tmp_path, vec):
    tt = vec["tenant_token"]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    admin = Ed25519PrivateKey.generate()
    fid = vec["fleet"]["fleet_id"]
    tl = T.TenantList(fid, (T.Tenant(tt["tenant"], (h(tt["public_key"]),)),), (), 1)
    (tmp_path / T.TENANTS_FILE).write_bytes(tl.signed(admin))
    gate = Gate(str(tmp_path), fid, admin.public_key().public_bytes_raw(),
                  clock=lambda: tt["valid_at"])
    assert gate.authorize(tt["jwt"], tt["user"].encode()).id == tt["tenant"]
    with pytest.raises(T.Unauthorized):
        gate.authorize(tt["jwt"], b"mallory")
    late = Gate(str(tmp_path), fid, admin.public_key().public_bytes_raw(),
                  clock=lambda: tt["claims"]["exp"])
    with pytest.raises(T.Unauthorized):
        late.authorize(tt["jwt"], tt["user"].encode())


def test_the_wire_examples_decode_as_the_node_reads_them(vec):
    for w in vec["wire"]:
        body = P.unpack(h(w["request"]))
        assert isinstance(body, dict) and isinstance(body["user"], str)
        for k, v in body.items():
            if k in ("request", "record", "ticket", "upload", "ke1", "ke3", "token", "payload",
                     "proof"):
                assert isinstance(v, bytes), (w["endpoint"], k)
        reply = P.unpack(h(w["reply"]))
        assert isinstance(reply, dict)
        if w["status"] >= 400:
            assert reply["error"] == P.ERRORS[w["status"]]
