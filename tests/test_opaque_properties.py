"""Hypothesis properties of the OPAQUE API (vault_raft.crypto.opaque)."""
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault_raft.crypto import _opaque_core as opaque_core
from vault_raft.crypto import opaque as O
from vault_raft.crypto.errors import OpaqueError
from vault_raft.crypto.ksf import IDENTITY_KSF, KSF

SETUP = O.ServerSetup.generate()
# A cheap Argon2id so properties can also exercise the real KSF path.
CHEAP_ARGON = KSF(memory_kib=64, iterations=1)

passwords = st.binary(min_size=1, max_size=64)
idents = st.none() | st.binary(max_size=40)
contexts = st.binary(max_size=40)
user_ids = st.binary(min_size=1, max_size=40)


def _enroll(pw, uid, ksf=IDENTITY_KSF, sid=None, cid=None):
    reg, req = O.ClientRegistration.start(pw, ksf=ksf)
    resp = O.server_registration_response(SETUP, req, uid)
    return reg.finish(resp, server_identity=sid, client_identity=cid,
                      expected_server_public_key=SETUP.public_key)


def _login(pw, record, uid, ctx=O.DEFAULT_CONTEXT, ksf=IDENTITY_KSF, sid=None, cid=None):
    login, ke1 = O.ClientLogin.start(pw, ksf=ksf, context=ctx)
    state, ke2 = O.server_login_start(SETUP, record, ke1, uid, context=ctx,
                                      server_identity=sid, client_identity=cid)
    return login, state, ke2


@given(passwords, user_ids, idents, idents, contexts, st.sampled_from([IDENTITY_KSF, CHEAP_ARGON]))
def test_round_trip(pw, uid, sid, cid, ctx, ksf):
    reg = _enroll(pw, uid, ksf, sid, cid)
    assert len(reg.record) == O.RECORD_LEN
    login, state, ke2 = _login(pw, reg.record, uid, ctx, ksf, sid, cid)
    out = login.finish(ke2, server_identity=sid, client_identity=cid,
                       expected_server_public_key=SETUP.public_key)
    assert O.server_login_finish(state, out.ke3) == out.session_key
    assert out.export_key == reg.export_key
    # The server state survives serialisation (it is sealed into a token).
    restored = O.ServerLogin.from_bytes(state.to_bytes())
    assert O.server_login_finish(restored, out.ke3) == out.session_key


@given(passwords, passwords, user_ids)
def test_wrong_password_fails_on_client(pw, other, uid):
    if pw == other:
        other = other + b"x"
    reg = _enroll(pw, uid)
    login, _, ke2 = _login(other, reg.record, uid)
    with pytest.raises(OpaqueError):
        login.finish(ke2)


@given(passwords, user_ids, st.data())
def test_flipping_any_ke2_byte_fails_on_client(pw, uid, data):
    reg = _enroll(pw, uid)
    login, _, ke2 = _login(pw, reg.record, uid)
    pos = data.draw(st.integers(0, len(ke2) - 1))
    bit = data.draw(st.integers(1, 255))
    bad = ke2[:pos] + bytes([ke2[pos] ^ bit]) + ke2[pos + 1:]
    with pytest.raises(OpaqueError):
        login.finish(bad)


@given(passwords, user_ids, st.data())
def test_flipping_any_ke3_byte_fails_on_server(pw, uid, data):
    reg = _enroll(pw, uid)
    login, state, ke2 = _login(pw, reg.record, uid)
    ke3 = login.finish(ke2).ke3
    pos = data.draw(st.integers(0, len(ke3) - 1))
    bit = data.draw(st.integers(1, 255))
    with pytest.raises(OpaqueError):
        O.server_login_finish(state, ke3[:pos] + bytes([ke3[pos] ^ bit]) + ke3[pos + 1:])


@given(passwords, user_ids)
def test_fake_response_indistinguishable_in_length_and_format(pw, uid):
    reg = _enroll(pw, uid)
    _, _, real = _login(pw, reg.record, uid)
    login, _, fake = _login(pw, None, uid)
    assert len(fake) == len(real) == O.KE2_LEN
    # Same format: both group elements in a fake KE2 are valid encodings.
    from vault_raft.crypto import group
    for ke2 in (real, fake):
        group.check_element(ke2[:32])
        group.check_element(ke2[32 + 32 + 128 + 32:32 + 32 + 128 + 64])
    # The client cannot tell a fake from a wrong password: same exception, same message.
    with pytest.raises(OpaqueError) as fake_exc:
        login.finish(fake)
    wrong_login, _, wrong_ke2 = _login(pw + b"!", reg.record, uid)
    with pytest.raises(OpaqueError) as wrong_exc:
        wrong_login.finish(wrong_ke2)
    assert str(fake_exc.value) == str(wrong_exc.value)
    # Repeated probes of one unknown user see the same fake credential.
    cred, record = SETUP.fake_credential(uid)
    assert (cred, record) == SETUP.fake_credential(uid)
    # ... under an identifier no real record has: not the user id, not another user's.
    assert cred != uid and cred != SETUP.fake_credential(uid + b"x")[0]
    opaque_core.check_record(record)


@settings(max_examples=200)
@given(st.binary(max_size=400), user_ids)
def test_malformed_inputs_raise_only_opaque_error(blob, uid):
    reg = _enroll(b"pw", b"u")
    login, state, ke2 = _login(b"pw", reg.record, b"u")
    calls = [
        lambda: O.server_registration_response(SETUP, blob, uid),
        lambda: O.server_login_start(SETUP, reg.record, blob, uid),
        lambda: O.server_login_start(SETUP, blob, login._state.ke1, uid),
        lambda: O.check_registration_record(blob),
        lambda: login.finish(blob),
        lambda: O.server_login_finish(state, blob),
        lambda: O.ServerSetup.from_bytes(blob),
        lambda: O.ServerLogin.from_bytes(blob),
    ]
    for call in calls:
        try:
            call()
        except OpaqueError:
            pass


def test_identity_and_non_canonical_elements_rejected():
    reg = _enroll(b"pw", b"u")
    login, ke1 = O.ClientLogin.start(b"pw")
    for bad_elem in (bytes(32), b"\xff" * 32):
        with pytest.raises(OpaqueError):
            O.server_registration_response(SETUP, bad_elem, b"u")
        with pytest.raises(OpaqueError):
            O.server_login_start(SETUP, reg.record, bad_elem + ke1[32:], b"u")
        with pytest.raises(OpaqueError):
            O.server_login_start(SETUP, reg.record, ke1[:64] + bad_elem, b"u")
        with pytest.raises(OpaqueError):
            O.check_registration_record(bad_elem + reg.record[32:])


def test_server_setup_round_trip_and_mismatch():
    data = SETUP.to_bytes()
    assert O.ServerSetup.from_bytes(data) == SETUP
    other = O.ServerSetup.generate()
    with pytest.raises(OpaqueError):
        O.ServerSetup.from_bytes(data[:96] + other.public_key)
    assert SETUP.private_key.hex() not in repr(SETUP)


def test_pinned_server_key_mismatch_rejected():
    reg_state, req = O.ClientRegistration.start(b"pw")
    resp = O.server_registration_response(SETUP, req, b"u")
    with pytest.raises(OpaqueError):
        reg_state.finish(resp, expected_server_public_key=O.ServerSetup.generate().public_key)


def test_default_ksf_is_argon2id_opaque_ke_parameters():
    k = O.ClientLogin.start(b"x")[0].ksf
    assert (k.kind, k.memory_kib, k.iterations, k.lanes, k.salt, k.length) == \
        ("argon2id", 19456, 2, 1, bytes(16), 64)
    with pytest.raises(OpaqueError):
        KSF(memory_kib=1)


def test_importing_the_curve_leaves_no_library_copy_behind(tmp_path):
    """rbcl copies its libsodium into the temp directory on every import; the
    group module deletes that copy once it is loaded (it leaked 2.8 MB per
    process: every node start and every CLI call)."""
    import subprocess
    import sys
    code = ("from vault_raft.crypto import group\n"
            "s = group.random_scalar()\n"
            "print(group.scalar_mult_base(s).hex())\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert len(bytes.fromhex(out.stdout.strip())) == 32
    assert os.listdir(tmp_path) == []


def test_a_fake_ke2_does_the_work_of_a_real_one(monkeypatch):
    """The fake path (unknown user) performs the same group operations as the
    real one -- the same OPRF evaluation, key share and three Diffie-Hellman
    products, one fake-credential derivation (used, or discarded) and one record
    check (their costs are compared by the bench)."""
    from vault_raft.crypto import group
    counts: dict = {}

    def counting(name):
        real = getattr(group, name)

        def wrapper(*a, **kw):
            counts[name] = counts.get(name, 0) + 1
            return real(*a, **kw)
        return wrapper
    names = ("scalar_mult", "scalar_mult_base", "check_element", "element_from_uniform",
             "hash_to_scalar")
    for name in names:
        monkeypatch.setattr(group, name, counting(name))
    reg = _enroll(b"pw", b"known")
    _, ke1 = O.ClientLogin.start(b"pw", ksf=IDENTITY_KSF)
    cred = os.urandom(32)
    record = reg.record

    def run(rec, cid):
        counts.clear()
        O.server_login_start(SETUP, rec, ke1, cid)
        return dict(counts)
    real, fake = run(record, cred), run(None, b"unknown user")
    assert real.get("scalar_mult", 0) >= 4  # (the counters see the work)
    assert real == fake, (real, fake)
    assert fake.get("element_from_uniform") == 1
