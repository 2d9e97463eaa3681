"""RFC 9807 Appendix C vectors, ristretto255 entries (real and fake), byte for byte."""
import json
import pathlib

from vault_raft.crypto import _opaque_core as C
from vault_raft.crypto.ksf import IDENTITY_KSF

# The vectors published with RFC 9807 (Appendix C), as the reference
# implementation's JSON, vendored so a fresh clone checks them.
VECTORS = pathlib.Path(__file__).parent / "vectors" / "opaque-rfc9807-vectors.json"


def _entries():
    entries = [e for e in json.loads(VECTORS.read_text()) if e["config"]["Group"] == "ristretto255"]
    assert entries, "no ristretto255 entries in the vector file"
    return entries


def _h(d, k):
    return bytes.fromhex(d[k]) if k in d else None


def test_vector_file_has_real_and_fake_ristretto_entries():
    kinds = {e["config"]["Fake"] for e in _entries()}
    assert kinds == {"True", "False"}


def test_real_vectors():
    n = 0
    for e in _entries():
        if e["config"]["Fake"] != "False":
            continue
        assert e["config"]["KSF"] == "Identity"
        i, o, m = e["inputs"], e["outputs"], e["intermediates"]
        ctx = bytes.fromhex(e["config"]["Context"])
        sid, cid = _h(i, "server_identity"), _h(i, "client_identity")
        pw = _h(i, "password")
        req = C.registration_request(pw, _h(i, "blind_registration"))
        assert req == _h(o, "registration_request")
        resp = C.registration_response(_h(i, "oprf_seed"), _h(i, "server_public_key"), req,
                                       _h(i, "credential_identifier"))
        assert resp == _h(o, "registration_response")
        record, export_key = C.registration_finalize(pw, _h(i, "blind_registration"), resp,
                                                     IDENTITY_KSF, _h(i, "envelope_nonce"),
                                                     sid, cid)
        assert record == _h(o, "registration_upload")
        assert record[:32] == _h(m, "client_public_key")
        assert record[32:96] == _h(m, "masking_key")
        assert record[96:] == _h(m, "envelope")
        assert export_key == _h(o, "export_key")
        login = C.client_start(pw, _h(i, "blind_login"), _h(i, "client_nonce"),
                               _h(i, "client_keyshare_seed"))
        assert login.ke1 == _h(o, "KE1")
        state, ke2 = C.server_respond(
            oprf_seed=_h(i, "oprf_seed"), server_sk=_h(i, "server_private_key"),
            server_pk=_h(i, "server_public_key"), record=record,
            credential_identifier=_h(i, "credential_identifier"), ke1=login.ke1, context=ctx,
            server_identity=sid, client_identity=cid, masking_nonce=_h(i, "masking_nonce"),
            server_nonce=_h(i, "server_nonce"), server_keyshare_seed=_h(i, "server_keyshare_seed"))
        assert ke2 == _h(o, "KE2")
        ke3, session_key, export_key2, server_pk = C.client_finish(login, ke2, IDENTITY_KSF, ctx,
                                                                   sid, cid)
        assert ke3 == _h(o, "KE3")
        assert session_key == _h(o, "session_key")
        assert export_key2 == _h(o, "export_key")
        assert server_pk == _h(i, "server_public_key")
        assert C.server_finish(state, ke3) == _h(o, "session_key")
        n += 1
    assert n == 2


def test_fake_vectors():
    n = 0
    for e in _entries():
        if e["config"]["Fake"] != "True":
            continue
        i, o = e["inputs"], e["outputs"]
        record = C.fake_record(_h(i, "client_public_key"), _h(i, "masking_key"))
        _, ke2 = C.server_respond(
            oprf_seed=_h(i, "oprf_seed"), server_sk=_h(i, "server_private_key"),
            server_pk=_h(i, "server_public_key"), record=record,
            credential_identifier=_h(i, "credential_identifier"), ke1=_h(i, "KE1"),
            context=bytes.fromhex(e["config"]["Context"]),
            server_identity=_h(i, "server_identity"), client_identity=_h(i, "client_identity"),
            masking_nonce=_h(i, "masking_nonce"), server_nonce=_h(i, "server_nonce"),
            server_keyshare_seed=_h(i, "server_keyshare_seed"))
        assert ke2 == _h(o, "KE2")
        n += 1
    assert n == 1
