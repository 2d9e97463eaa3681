"""Every conformance vector, checked with the independent implementation
(vaultspec.py, written from docs/protocol.md).  Imports nothing from this
repository.  Each ``check_*`` takes the vectors (docs/vectors/protocol-v1.json)
and the RFC 9807 vectors (tests/vectors/opaque-rfc9807-vectors.json, or None).

    python tests/independent/spec_checks.py docs/vectors/protocol-v1.json \
        tests/vectors/opaque-rfc9807-vectors.json
"""
from __future__ import annotations

import json
import sys

import msgpack
import vaultspec as S
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

h = bytes.fromhex


def _eq(got: bytes, want_hex: str, what: str) -> None:
    assert got.hex() == want_hex, f"{what}: {got.hex()} != {want_hex}"


def _ksf(vec) -> dict:
    return {k: v for k, v in vec["fleet"]["ksf"]}


def _user(vec) -> bytes:
    return vec["enroll"]["user"].encode()


def check_lp(vec, rfc=None):
    for case in vec["lp"]:
        _eq(S.lp(*[h(p) for p in case["parts"]]), case["output"], "lp")
    assert S.lp(b"vault-raft", b"", b"\x00\x01") == h("0000000a7661756c742d72616674"
                                                       "00000000000000020001")  # section 8.1


def check_opaque_rfc9807(vec, rfc):
    """The OPAQUE math of vaultspec reproduces RFC 9807's ristretto255 vectors."""
    if rfc is None:
        return
    n = 0
    for e in rfc:
        if e["config"]["Group"] != "ristretto255" or e["config"]["Fake"] != "False":
            continue
        i, o = e["inputs"], e["outputs"]
        ctx, ksf = h(e["config"]["Context"]), {"kind": "identity"}
        sid = h(i["server_identity"]) if "server_identity" in i else None
        cid = h(i["client_identity"]) if "client_identity" in i else None
        pw, spk = h(i["password"]), h(i["server_public_key"])
        req = S.registration_request(pw, h(i["blind_registration"]))
        _eq(req, o["registration_request"], "RFC registration request")
        resp = S.registration_response(h(i["oprf_seed"]), spk, req, h(i["credential_identifier"]))
        _eq(resp, o["registration_response"], "RFC registration response")
        record, export, _ = S.finalize_registration(pw, h(i["blind_registration"]), resp, ksf,
                                                    h(i["envelope_nonce"]), spk, sid, cid)
        _eq(record, o["registration_upload"], "RFC record")
        _eq(export, o["export_key"], "RFC export key")
        ke1, state = S.ke1(pw, h(i["blind_login"]), h(i["client_nonce"]),
                           h(i["client_keyshare_seed"]))
        _eq(ke1, o["KE1"], "RFC KE1")
        ke2, expected_ke3, session = S.server_ke2(
            h(i["oprf_seed"]), h(i["server_private_key"]), spk, record,
            h(i["credential_identifier"]), ke1, ctx, h(i["masking_nonce"]),
            h(i["server_nonce"]), h(i["server_keyshare_seed"]), sid, cid)
        _eq(ke2, o["KE2"], "RFC KE2")
        ke3, client_session, _ = S.client_ke3(state, ke2, ksf, ctx, spk, sid, cid)
        _eq(ke3, o["KE3"], "RFC KE3")
        assert ke3 == expected_ke3 and session == client_session
        _eq(session, o["session_key"], "RFC session key")
        n += 1
    assert n == 2, "the RFC file has two real ristretto255 entries"


def check_fleet(vec, rfc=None):
    f = vec["fleet"]
    _eq(S.opaque_context(f["fleet_id"]), f["context"], "context")
    o = f["opaque"]
    assert S.smult_base(h(o["server_private_key"])).hex() == o["server_public_key"]
    sk = X25519PrivateKey.from_private_bytes(h(f["enroll_key"]["private_key"]))
    assert sk.public_key().public_bytes_raw().hex() == f["enroll_key"]["public_key"]
    S.check_ksf(_ksf(vec))
    names = [k for k, _ in f["ksf"]]
    assert names == sorted(names) == ["iterations", "kind", "lanes", "length", "memory_kib",
                                      "salt"]


def check_enroll(vec, rfc=None):
    f, en = vec["fleet"], vec["enroll"]
    o, i = f["opaque"], en["inputs"]
    pw, spk = h(en["password"]), h(o["server_public_key"])
    req = S.registration_request(pw, h(i["blind_registration"]))
    _eq(req, en["registration_request"], "registration request")
    resp = S.registration_response(h(o["oprf_seed"]), spk, req, h(i["credential_identifier"]))
    _eq(resp, en["registration_response"], "registration response")
    record, export, rwd = S.finalize_registration(pw, h(i["blind_registration"]), resp, _ksf(vec),
                                                  h(i["envelope_nonce"]), spk)
    _eq(rwd, en["randomized_password"], "randomized password (Argon2id)")
    _eq(record, en["registration_record"], "record")
    _eq(export, en["export_key"], "export key")
    # a response naming another server key than the bundle's is refused (8.2.5)
    other = S.smult_base(h(o["server_private_key"])[::-1][:31] + b"\x00")
    try:
        S.finalize_registration(pw, h(i["blind_registration"]), resp[:32] + other, _ksf(vec),
                                h(i["envelope_nonce"]), spk)
        raise AssertionError("a foreign server key was accepted")
    except S.Refused:
        pass
    # the upload (8.3): info from the spec, opens to the secret; ours opens too
    up = en["upload"]
    info = S.upload_info(f["fleet_id"], _user(vec), b"enroll", h(en["ticket"]["nonce"]))
    _eq(info, up["info"], "upload info")
    assert up["binding"] == en["ticket"]["nonce"] and up["purpose"] == "enroll"
    assert S.open_upload(h(up["recipient_private_key"]), h(up["ciphertext"]), info) == \
        h(en["secret"])
    assert len(h(up["ciphertext"])) == 48 + len(h(en["secret"]))
    sk = X25519PrivateKey.from_private_bytes(h(up["recipient_private_key"]))
    mine = S.seal_upload(sk, h(en["secret"]), info)
    assert S.open_upload(h(up["recipient_private_key"]), mine, info) == h(en["secret"])
    try:
        S.open_upload(h(up["recipient_private_key"]), h(up["ciphertext"]),
                      S.upload_info(f["fleet_id"], b"mallory", b"enroll", h(en["ticket"]["nonce"])))
        raise AssertionError("the upload opened under another user's info")
    except Exception as exc:  # noqa: BLE001 (cryptography's own error type)
        assert not isinstance(exc, AssertionError)


def _login(vec, section: str):
    f, en, r = vec["fleet"], vec["enroll"], vec[section]
    o, i = f["opaque"], r["inputs"]
    ke1, state = S.ke1(h(r["password"]), h(i["blind_login"]), h(i["client_nonce"]),
                       h(i["client_keyshare_seed"]))
    _eq(ke1, r["KE1"], f"{section} KE1")
    ke2, expected_ke3, session = S.server_ke2(
        h(o["oprf_seed"]), h(o["server_private_key"]), h(o["server_public_key"]),
        h(en["registration_record"]), h(en["inputs"]["credential_identifier"]), ke1,
        h(f["context"]), h(i["masking_nonce"]), h(i["server_nonce"]), h(i["server_keyshare_seed"]))
    _eq(ke2, r["KE2"], f"{section} KE2")
    return state, ke2, expected_ke3, session


def check_recover_right(vec, rfc=None):
    state, ke2, expected_ke3, session = _login(vec, "recover_right")
    r = vec["recover_right"]
    ke3, client_session, export = S.client_ke3(state, ke2, _ksf(vec), h(vec["fleet"]["context"]),
                                               h(vec["fleet"]["opaque"]["server_public_key"]))
    _eq(ke3, r["KE3"], "KE3")
    assert ke3 == expected_ke3 and session == client_session
    _eq(session, r["session_key"], "session key")
    _eq(export, r["export_key"], "export key")
    assert r["attempts_left"] == vec["enroll"]["max_attempts"] - 2 and r["failed_attempts"] == 1
    # with another context (an empty one, as the Python bindings of opaque-ke use), the
    # same KE2 does not verify: section 12
    try:
        S.client_ke3(state, ke2, _ksf(vec), b"", h(vec["fleet"]["opaque"]["server_public_key"]))
        raise AssertionError("a KE2 verified under the wrong context")
    except S.Refused:
        pass


def check_recover_wrong(vec, rfc=None):
    state, ke2, _, _ = _login(vec, "recover_wrong")
    r = vec["recover_wrong"]
    assert r["outcome"] == "wrong_code" and r["attempts_left"] == vec["enroll"]["max_attempts"] - 1
    try:
        S.client_ke3(state, ke2, _ksf(vec), h(vec["fleet"]["context"]),
                     h(vec["fleet"]["opaque"]["server_public_key"]))
        raise AssertionError("the wrong code logged in")
    except S.Refused:
        pass


def check_secret_box(vec, rfc=None):
    b = vec["secret_box"]
    sk, user, token = h(b["session_key"]), h(b["user"]), h(b["token"])
    assert b["token"] == vec["recover_right"]["token"] and user == _user(vec)
    _eq(S.session_subkey(sk, b"release"), b["release_key"], "release key")
    assert h(b["label"]) == b"vault-raft session v1 release"
    _eq(S.release_ad(user, token), b["ad"], "release AD")
    assert S.open_box(sk, user, token, h(b["secret_box"])) == h(b["plaintext"])
    _eq(S.seal_box(sk, user, token, h(b["plaintext"]), h(b["nonce"])), b["secret_box"], "box")
    box = h(b["secret_box"])
    assert len(box) == 29 + len(h(b["plaintext"])) and box[0] == 1
    for bad in (b"\x02" + box[1:], box[:-1] + bytes([box[-1] ^ 1]), box[:28]):
        try:
            S.open_box(sk, user, token, bad)
            raise AssertionError("an altered box opened")
        except S.Refused:
            pass
    try:
        S.open_box(sk, b"mallory", token, box)
        raise AssertionError("the box opened for another user")
    except S.Refused:
        pass


def check_manage(vec, rfc=None):
    m, f = vec["manage"], vec["fleet"]
    sk, user, token = h(m["session_key"]), h(m["user"]), h(m["token"])
    _eq(S.session_subkey(sk, b"manage"), m["manage_key"], "manage key")
    assert [p["op"] for p in m["proofs"]] == ["change_secret", "change_code", "delete"]
    for p in m["proofs"]:
        payload, ticket = h(p["payload"]), h(p["ticket"])
        assert (p["op"] == "change_code") == bool(ticket)
        _eq(S.manage_message(p["op"], user, token, payload, ticket), p["message"], "message")
        _eq(S.manage_proof(sk, p["op"], user, token, payload, ticket), p["proof"], p["op"])
        assert len(h(p["proof"])) == 32
    cs = m["change_secret_upload"]
    info = S.upload_info(f["fleet_id"], user, b"change_secret", token)
    _eq(info, cs["info"], "change_secret info")
    assert cs["ciphertext"] == m["proofs"][0]["payload"]
    assert S.open_upload(h(cs["recipient_private_key"]), h(cs["ciphertext"]), info) == \
        h(cs["plaintext"])
    cc, o = m["change_code"], f["opaque"]
    req = S.registration_request(h(cc["password"]), h(cc["inputs"]["blind_registration"]))
    _eq(req, cc["registration_request"], "change_code request")
    resp = S.registration_response(h(o["oprf_seed"]), h(o["server_public_key"]), req,
                                   h(cc["inputs"]["credential_identifier"]))
    _eq(resp, cc["registration_response"], "change_code response")
    record, _, _ = S.finalize_registration(h(cc["password"]), h(cc["inputs"]["blind_registration"]),
                                           resp, _ksf(vec), h(cc["inputs"]["envelope_nonce"]),
                                           h(o["server_public_key"]))
    _eq(record, cc["registration_record"], "change_code record")
    assert m["proofs"][1]["payload"] == cc["registration_record"]
    assert m["proofs"][1]["ticket"] == cc["ticket"]


def check_tenant_token(vec, rfc=None):
    t = vec["tenant_token"]
    fid = vec["fleet"]["fleet_id"]
    claims = S.check_tenant_token(t["jwt"], [h(t["public_key"])], t["tenant"],
                                  t["user"].encode(), {fid}, t["valid_at"])
    assert claims == t["claims"]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    assert Ed25519PrivateKey.from_private_bytes(h(t["private_key"])).public_key() \
        .public_bytes_raw().hex() == t["public_key"]
    for args, why in ((dict(user=b"mallory"), "another user"), (dict(now=claims["exp"]), "expired"),
                      (dict(audiences={"another"}), "another audience")):
        kw = dict(user=t["user"].encode(), audiences={fid}, now=t["valid_at"]) | args
        try:
            S.check_tenant_token(t["jwt"], [h(t["public_key"])], t["tenant"], kw["user"],
                                 kw["audiences"], kw["now"])
            raise AssertionError(f"accepted a token for {why}")
        except S.Refused:
            pass


def _config(vec) -> dict:
    tr = vec["trust"]
    return {"namespace": tr["namespace"], "operator_key": h(tr["operator_key"]["public_key"]),
            "witness_key": h(tr["witness_key"]["public_key"]),
            "max_head_age": tr["max_head_age"]}


def _state(d: dict) -> dict:
    return {"tree_size": d["tree_size"], "tree_root": h(d["tree_root"]), "epochs": d["epochs"]}


def check_trust(vec, rfc=None):
    tr = vec["trust"]
    reply = msgpack.unpackb(h(tr["trust_reply"]), raw=False)
    # the parts of the reply are the vector's parts
    b = tr["bundle"]
    assert reply["bundle"].hex() == b["bundle"] and reply["operator_sig"].hex() == b["operator_sig"]
    assert reply["statement"].hex() == tr["statement"]["statement"]
    assert reply["sth"].hex() == tr["tree_head"]["sth"]
    assert [x.hex() for x in reply["inclusion"]] == tr["inclusion"]
    assert [x.hex() for x in reply["consistency"]] == tr["consistency"]
    # the log: leaf hashes, root, proofs
    leaves = [h(x["leaf_hash"]) for x in tr["log"]]
    for x in tr["log"]:
        _eq(S.leaf_hash(h(x["statement"])), x["leaf_hash"], "leaf hash")
    assert tr["log"][reply["leaf_index"]]["statement"] == tr["statement"]["statement"]
    assert _root(leaves).hex() == tr["tree_head"]["root"]
    before = tr["client_state_before"]
    assert _root(leaves[:before["tree_size"]]).hex() == before["tree_root"]
    # the bundle and its fields
    bundle = S.parse_bundle(reply["bundle"])
    _eq(bundle["digest"], b["digest"], "bundle digest")
    assert (bundle["epoch"], bundle["not_before"], bundle["not_after"], bundle["prev_hash"].hex()) \
        == (b["epoch"], b["not_before"], b["not_after"], b["prev_hash"])
    e1 = S.parse_bundle(h(tr["bundle_epoch_1"]["bundle"]))
    assert bundle["prev_hash"] == e1["digest"] and e1["prev_hash"] == bytes(32)
    entry, want = bundle["fleets"][0], tr["fleet_entry"]
    assert entry["fleet_id"] == want["fleet_id"] == vec["fleet"]["fleet_id"]
    assert entry["opaque_server_key"].hex() == want["opaque_server_key"] == \
        vec["fleet"]["opaque"]["server_public_key"]
    assert entry["enroll_key"].hex() == want["enroll_key"] == \
        vec["fleet"]["enroll_key"]["public_key"]
    assert entry["ksf"] == _ksf(vec) and entry["channel_ca"].hex() == tr["channel_ca"]
    st = msgpack.unpackb(reply["statement"], raw=False)
    assert st == [1, tr["namespace"], tr["statement"]["timestamp"], 2, bundle["digest"]]
    # section 6.8, from a saved state (consistency proof) and from none
    got, new = S.verify_trust(reply, _config(vec), _state(before), tr["verify_at"])
    after = tr["client_state_after"]
    assert (new["tree_size"], new["tree_root"].hex(), new["epochs"]) == (
        after["tree_size"], after["tree_root"], after["epochs"])
    S.verify_trust(dict(reply, consistency=[]), _config(vec),
                   {"tree_size": 0, "tree_root": b"", "epochs": {}}, tr["verify_at"])


def _root(leaves: list[bytes]) -> bytes:
    """RFC 9162 MTH over leaf hashes (for the check only)."""
    import hashlib
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return S.node_hash(_root(leaves[:k]), _root(leaves[k:]))


def check_trust_refusals(vec, rfc=None):
    """Each step of 6.8 refuses what it should (a sanity check of vaultspec itself)."""
    tr = vec["trust"]
    reply = msgpack.unpackb(h(tr["trust_reply"]), raw=False)
    before, now = _state(tr["client_state_before"]), tr["verify_at"]

    def flip(b: bytes) -> bytes:
        return b[:-1] + bytes([b[-1] ^ 1])
    cases = {
        "2: operator": dict(reply, operator_sig=flip(reply["operator_sig"])),
        "3: witness": dict(reply, witness_sig=flip(reply["witness_sig"])),
        "5: head signature": dict(reply, sth_sig=flip(reply["sth_sig"])),
        "5: consistency": dict(reply, consistency=reply["consistency"][:-1]),
        "6: inclusion": dict(reply, leaf_index=reply["leaf_index"] - 1),
        "1: not canonical": dict(reply, bundle=reply["bundle"] + b"\x00"),
    }
    for why, bad in cases.items():
        try:
            S.verify_trust(bad, _config(vec), dict(before), now)
            raise AssertionError(f"accepted with {why}")
        except (S.Refused, msgpack.ExtraData, ValueError):
            pass
    refusals = [
        ("4: expired", dict(before), tr["bundle"]["not_after"] + 1),
        ("8: head too old", dict(before), tr["tree_head"]["timestamp"] + tr["max_head_age"] + 1),
        ("7: replay", dict(before, epochs={tr["namespace"]: [3, "00" * 32]}), now),
    ]
    for why, state, at in refusals:
        try:
            S.verify_trust(reply, _config(vec), state, at)
            raise AssertionError(f"accepted with {why}")
        except S.Refused:
            pass
    try:
        S.verify_trust(reply, dict(_config(vec), namespace="another"), dict(before), now)
        raise AssertionError("accepted another namespace")
    except S.Refused:
        pass


def check_deployment(vec, rfc=None):
    tr = vec["trust"]
    dep = msgpack.unpackb(h(tr["deployment"]["reply"]), raw=False)
    assert dep["record"].hex() == tr["deployment"]["record"]
    bundle = S.parse_bundle(h(tr["bundle"]["bundle"]))
    nodes = S.verify_deployment(dep["record"], dep["operator_sig"],
                                h(tr["operator_key"]["public_key"]), bundle["fleets"][0])
    assert nodes == ["n1", "n2", "n3"]
    try:
        S.verify_deployment(dep["record"], dep["operator_sig"],
                            h(tr["witness_key"]["public_key"]), bundle["fleets"][0])
        raise AssertionError("a record signed by another key was accepted")
    except S.Refused:
        pass


def check_wire(vec, rfc=None):
    """The msgpack bodies (section 5): maps with str keys; the user a str; byte
    fields bin of the specified lengths; the values are the vectors'."""
    lengths = {"request": 32, "response": 64, "record": 192, "ke1": 96, "ke2": 320, "ke3": 64,
               "nonce": 16, "proof": 32}
    rr = vec["recover_right"]
    for w in vec["wire"]:
        for part in ("request", "reply"):
            body = msgpack.unpackb(h(w[part]), raw=False)
            assert isinstance(body, dict) and all(isinstance(k, str) for k in body), w
            for k, v in body.items():
                if k in lengths:
                    assert isinstance(v, bytes) and len(v) == lengths[k], (w["endpoint"], k)
                if k in ("ticket", "token"):
                    assert isinstance(v, bytes) and 1 <= len(v) <= 1024
                if k in ("deadline_ms", "max_attempts", "attempts_left", "expires_ms",
                         "failed_attempts"):
                    assert type(v) is int
        req = msgpack.unpackb(h(w["request"]), raw=False)
        rep = msgpack.unpackb(h(w["reply"]), raw=False)
        assert req["user"] == vec["enroll"]["user"]
        if w["status"] >= 400:
            assert isinstance(rep["error"], str) and isinstance(rep["message"], str)
        else:
            assert "auth" in req and req["auth"] == vec["tenant_token"]["jwt"]
        if w["endpoint"] == "POST /v1/recover/finish" and w["status"] == 200:
            assert rep["secret_box"].hex() == vec["secret_box"]["secret_box"]
            assert req["ke3"].hex() == rr["KE3"] and req["token"].hex() == rr["token"]
        if w["endpoint"] == "POST /v1/enroll/finish" and w["status"] == 201:
            assert S.open_upload(h(vec["fleet"]["enroll_key"]["private_key"]), req["upload"],
                                 h(vec["enroll"]["upload"]["info"])) == h(vec["enroll"]["secret"])
        if w["endpoint"] == "POST /v1/manage":
            p = next(p for p in vec["manage"]["proofs"] if p["op"] == req["op"])
            assert req["proof"].hex() == p["proof"] and req["payload"].hex() == p["payload"]


CHECKS = [name for name in list(globals()) if name.startswith("check_")]


def main(argv: list[str]) -> int:
    vec = json.load(open(argv[1] if len(argv) > 1 else "docs/vectors/protocol-v1.json"))
    rfc = json.load(open(argv[2])) if len(argv) > 2 else None
    for name in CHECKS:
        globals()[name](vec, rfc)
        print("ok", name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
