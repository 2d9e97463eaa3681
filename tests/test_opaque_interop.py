"""Interoperability with opaque-ke (Meta's Rust OPAQUE) through its Python bindings.

Both sides use RFC 9807 ristretto255-SHA512 with Argon2id m=19456 KiB, t=2, p=1,
salt of 16 zero bytes, 64-byte output (opaque-ke's defaults = ours), an empty
context and default identities (the bindings expose neither).
Skipped when the bindings are not installed.
"""
import base64

import pytest

from vault_raft.crypto import opaque as O

pytestmark = pytest.mark.interop
PW = b"correct horse battery staple"


def _b64e(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_our_client_against_opaque_ke_py_server():
    K = pytest.importorskip("opaque_ke_py")
    setup = K.server_setup()  # never call setup.get_public_key(): it returns the private setup
    reg, req = O.ClientRegistration.start(PW)
    res = reg.finish(K.server_registration_start(setup, req, b"alice").get_message())
    password_file = K.server_registration_finish(res.record).get_password_file()
    login, ke1 = O.ClientLogin.start(PW, context=b"")
    started = K.server_login_start(setup, password_file, ke1, b"alice")
    out = login.finish(started.get_message())
    finished = K.server_login_finish(started.get_state(), out.ke3)
    assert finished.get_session_key() == out.session_key
    assert out.export_key == res.export_key
    # and a wrong password is refused by our client
    bad, ke1 = O.ClientLogin.start(PW + b"?", context=b"")
    with pytest.raises(O.OpaqueError):
        bad.finish(K.server_login_start(setup, password_file, ke1, b"alice").get_message())


def test_opaque_ke_py_client_against_our_server():
    K = pytest.importorskip("opaque_ke_py")
    setup = O.ServerSetup.generate()
    start = K.client_registration_start(PW)
    resp = O.server_registration_response(setup, start.get_message(), b"bob")
    fin = K.client_registration_finish(PW, start.get_state(), resp)
    record = O.check_registration_record(fin.get_message())
    cl = K.client_login_start(PW)
    state, ke2 = O.server_login_start(setup, record, cl.get_message(), b"bob", context=b"")
    done = K.client_login_finish(PW, cl.get_state(), ke2)
    assert O.server_login_finish(state, done.get_message()) == done.get_session_key()
    assert done.get_export_key() == fin.get_export_key()


def test_our_client_against_opaquepy_server():
    P = pytest.importorskip("opaquepy")
    setup = P.create_setup()
    reg, req = O.ClientRegistration.start(PW)
    res = reg.finish(_b64d(P.register(setup, _b64e(req), "carol")))
    password_file = P.register_finish(_b64e(res.record))
    login, ke1 = O.ClientLogin.start(PW, context=b"")
    ke2, state = P.login(setup, password_file, _b64e(ke1), "carol")
    out = login.finish(_b64d(ke2))
    assert _b64d(P.login_finish(_b64e(out.ke3), state)) == out.session_key


def test_opaquepy_client_against_our_server():
    lib = pytest.importorskip("opaquepy.lib")
    setup = O.ServerSetup.generate()
    msg, reg_state = lib.register_client(PW.decode())
    resp = O.server_registration_response(setup, _b64d(msg), b"dave")
    record = _b64d(lib.register_client_finish(reg_state, PW.decode(), _b64e(resp)))
    msg, login_state = lib.login_client(PW.decode())
    state, ke2 = O.server_login_start(setup, record, _b64d(msg), b"dave", context=b"")
    ke3, session_key = lib.login_client_finish(login_state, PW.decode(), _b64e(ke2))
    assert O.server_login_finish(state, _b64d(ke3)) == _b64d(session_key)


def test_neither_binding_can_log_in_to_a_fleet_whose_context_it_cannot_pass():
    """docs/protocol.md section 12: a fleet's logins carry the context
    "vault-raft OPAQUE v1 " + fleet id; the bindings cannot pass one, so their
    login finish refuses every KE2 of a fleet (InvalidLoginError), as it would a
    wrong password. Registration, which has no context, works."""
    from vault_raft.fleet.config import opaque_context
    ctx = opaque_context("0123456789abcdef")
    setup = O.ServerSetup.generate()
    K = pytest.importorskip("opaque_ke_py")
    start = K.client_registration_start(PW)
    resp = O.server_registration_response(setup, start.get_message(), b"erin")
    record = O.check_registration_record(
        K.client_registration_finish(PW, start.get_state(), resp).get_message())
    cl = K.client_login_start(PW)
    _, ke2 = O.server_login_start(setup, record, cl.get_message(), b"erin", context=ctx)
    with pytest.raises(ValueError, match="InvalidLogin"):
        K.client_login_finish(PW, cl.get_state(), ke2)
    lib = pytest.importorskip("opaquepy.lib")
    msg, reg_state = lib.register_client(PW.decode())
    resp = O.server_registration_response(setup, _b64d(msg), b"frank")
    record = _b64d(lib.register_client_finish(reg_state, PW.decode(), _b64e(resp)))
    msg, login_state = lib.login_client(PW.decode())
    _, ke2 = O.server_login_start(setup, record, _b64d(msg), b"frank", context=ctx)
    with pytest.raises(ValueError, match="InvalidLogin"):
        lib.login_client_finish(login_state, PW.decode(), _b64e(ke2))
