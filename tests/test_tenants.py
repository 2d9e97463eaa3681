"""Who may act for a user: tenant tokens and rate limits.

In process: the token check against every malformed, misdirected or forged
token we can think of, and Hypothesis-made ones (401, never anything else).
Against real nodes: each bad token costs no commit; a flood from one user is
answered 429 while another user recovers.
"""
import base64
import json
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from vault_raft import client as C
from vault_raft.api.channel import connection
from vault_raft.fleet import tenants as T
from vault_raft.fleet.keystore import load_signing_key
from vault_raft.fleet.tenant_gate import Gate

FLEET = "f1eet"


def _b64(d) -> str:
    raw = d if isinstance(d, bytes) else json.dumps(d).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Issuer:
    """What the BAD cases below sign with: tenant acme's key, for one fleet."""

    def __init__(self, acme: Ed25519PrivateKey, aud: str):
        self.acme, self.aud = acme, aud


@pytest.fixture
def gate(tmp_path):
    admin = Ed25519PrivateKey.generate()
    acme = Ed25519PrivateKey.generate()
    tl = T.TenantList(FLEET, (T.Tenant("acme", (acme.public_key().public_bytes_raw(),)),),
                      ("ns",), 1)
    (tmp_path / T.TENANTS_FILE).write_bytes(tl.signed(admin))
    g = Gate(str(tmp_path), FLEET, admin.public_key().public_bytes_raw())
    return g, Issuer(acme, FLEET)


def _claims(g, **over):
    now = int(time.time())
    c = {"iss": "acme", "sub": "alice", "aud": g.aud, "iat": now, "exp": now + 300, "jti": "x1"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def _sign(g, claims, key=None) -> str:
    return jwt.encode(claims, key or g.acme, algorithm="EdDSA")


def test_a_good_token_names_its_tenant_and_the_record_key(gate):
    gate, iss = gate
    t = gate.authorize(T.mint("acme", iss.acme, b"alice", FLEET), b"alice")
    assert t.id == "acme" and t.record_key(b"alice") == b"acme\0alice"
    assert gate.authorize(_sign(iss, _claims(iss, aud="ns")), b"alice").id == "acme"


BAD = {
    "missing": lambda g: None,
    "empty": lambda g: "",
    "not a string": lambda g: b"abc",
    "not a JWT": lambda g: "abc.def",
    "expired": lambda g: _sign(g, _claims(g, iat=int(time.time()) - 400,
                                          exp=int(time.time()) - 100)),
    "future-dated": lambda g: _sign(g, _claims(g, iat=int(time.time()) + 600,
                                               exp=int(time.time()) + 800)),
    "too long a life": lambda g: _sign(g, _claims(g, exp=int(time.time()) + 3600)),
    "wrong audience": lambda g: _sign(g, _claims(g, aud="another-fleet")),
    "audience list": lambda g: _sign(g, _claims(g, aud=[FLEET])),
    "wrong subject": lambda g: _sign(g, _claims(g, sub="bob")),
    "unknown issuer": lambda g: _sign(g, _claims(g, iss="evil")),
    "no jti": lambda g: _sign(g, _claims(g, jti=None)),
    "string exp": lambda g: _sign(g, _claims(g, exp=str(int(time.time()) + 60))),
    "bool iat": lambda g: _sign(g, _claims(g, iat=True)),
    "another key": lambda g: _sign(g, _claims(g), key=Ed25519PrivateKey.generate()),
    "alg none": lambda g: _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims(g)) + ".",
    "HS256 with the public key as secret": lambda g: jwt.api_jws.PyJWS(
        algorithms=["HS256"]).encode(json.dumps(_claims(g)).encode(),
                                     g.acme.public_key().public_bytes_raw(), algorithm="HS256"),
    "oversized": lambda g: _sign(g, _claims(g, pad="x" * 4000)),
    "duplicated claim": lambda g: _resign(g, '{"iss":"acme","sub":"bob","sub":"alice","aud":"'
                                          + g.aud + f'","iat":{int(time.time())},'
                                          + f'"exp":{int(time.time()) + 60},"jti":"j"}}'),
    "payload not an object": lambda g: _resign(g, "[1,2,3]"),
    "payload not JSON": lambda g: _resign(g, "\xff\xfe"),
    "signature of another payload": lambda g: ".".join(
        [_sign(g, _claims(g)).split(".")[0], _b64(_claims(g, sub="alice ")),
         _sign(g, _claims(g)).split(".")[2]]),
}


def _resign(g, payload: str) -> str:
    """A correctly signed token around an arbitrary payload (as a careless tenant might)."""
    return jwt.api_jws.encode(payload.encode("utf-8", "surrogatepass"), g.acme,
                              algorithm="EdDSA")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tokens_are_refused(gate, case):
    gate, iss = gate
    with pytest.raises(T.Unauthorized):
        gate.authorize(BAD[case](iss), b"alice")


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.text(max_size=80),
                           st.text(max_size=200), st.text(max_size=90))))
def test_fuzzed_tokens_are_refused_cleanly(tmp_path_factory, token):
    admin, acme = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    d = tmp_path_factory.mktemp("g")
    tl = T.TenantList(FLEET, (T.Tenant("acme", (acme.public_key().public_bytes_raw(),)),), (), 1)
    (d / T.TENANTS_FILE).write_bytes(tl.signed(admin))
    g = Gate(str(d), FLEET, admin.public_key().public_bytes_raw())
    with pytest.raises(T.Unauthorized):
        g.authorize(token, b"alice")


def test_a_tenant_list_must_be_signed_by_the_admin_key(tmp_path):
    admin, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    tl = T.TenantList(FLEET, (), (), 1)
    pk = admin.public_key().public_bytes_raw()
    with pytest.raises(T.TenantError, match="no tenant list"):  # fails closed without one
        Gate(str(tmp_path), FLEET, pk).check_ready()
    (tmp_path / T.TENANTS_FILE).write_bytes(tl.signed(other))
    with pytest.raises(T.TenantError, match="admin key"):
        Gate(str(tmp_path), FLEET, pk).check_ready()
    (tmp_path / T.TENANTS_FILE).write_bytes(tl.signed(admin))
    with pytest.raises(T.TenantError, match="is for fleet"):
        Gate(str(tmp_path), "other-fleet", pk).check_ready()


def test_an_older_list_cannot_replace_a_newer_one_and_a_bad_one_keeps_the_good(tmp_path):
    admin, old_key, new_key = (Ed25519PrivateKey.generate() for _ in range(3))
    pk = admin.public_key().public_bytes_raw()

    def listing(key, created):
        return T.TenantList(FLEET, (T.Tenant("acme", (key.public_key().public_bytes_raw(),)),),
                            (), created).signed(admin)
    path = tmp_path / T.TENANTS_FILE
    path.write_bytes(listing(old_key, 100))
    g = Gate(str(tmp_path), FLEET, pk)
    old_token = T.mint("acme", old_key, b"alice", FLEET)
    assert g.authorize(old_token, b"alice").id == "acme"
    path.write_bytes(listing(new_key, 200))  # the leaked old key is rotated out
    with pytest.raises(T.Unauthorized):
        g.authorize(old_token, b"alice")
    path.write_bytes(listing(old_key, 100))  # an attacker puts the old list back
    with pytest.raises(T.Unauthorized):
        g.authorize(old_token, b"alice")
    # nor after a restart: the newest date is remembered, and no list is served (503)
    with pytest.raises(T.TenantError, match="older"):
        Gate(str(tmp_path), FLEET, pk).authorize(old_token, b"alice")
    path.write_bytes(b"half a file")  # a bad copy: the good list stays in force
    assert g.authorize(T.mint("acme", new_key, b"alice", FLEET), b"alice").id == "acme"


def test_user_ids_with_nul_and_deeply_nested_payloads_are_refused(gate):
    gate, iss = gate
    with pytest.raises(T.Unauthorized, match="NUL"):
        gate.authorize(_sign(iss, _claims(iss, sub="acme\u0000alice")), b"acme\0alice")
    with pytest.raises(T.Unauthorized):
        gate.authorize(_b64({"alg": "EdDSA"}) + "." + _b64(b"[" * 5000) + ".x", b"alice")


def test_rate_limits_per_user_and_tenant(gate):
    gate, _ = gate
    t = T.Tenant("acme", gate.tenants.tenants[0].keys, False, 100.0, 5.0, 1.0, 3.0)
    for _ in range(3):
        gate.admit(t, b"alice")
    with pytest.raises(T.RateLimited) as exc:
        gate.admit(t, b"alice")
    assert 0 < exc.value.retry_after <= 1.0
    gate.admit(t, b"bob")  # another user has a bucket of its own ...
    gate.admit(t, b"carol")
    with pytest.raises(T.RateLimited, match="tenant"):  # ... until the tenant's is empty
        gate.admit(t, b"dave")


# ------------------------------------------------------------ real nodes

def _post(cl, nid, path, body):
    import msgpack
    conn = connection(cl.api[nid], 5, cl.channel)
    try:
        conn.request("POST", path, body=msgpack.packb(body, use_bin_type=True),
                     headers={"Content-Type": "application/msgpack"})
        r = conn.getresponse()
        return r.status, msgpack.unpackb(r.read(), raw=False), r.getheader("Retry-After")
    finally:
        conn.close()


@pytest.mark.cluster
def test_bad_tokens_cost_no_commit_on_real_nodes(cluster_factory):
    cl = cluster_factory(3)
    leader = cl.leader()
    iss = Issuer(load_signing_key(T.add_tenant(cl.dir, "acme")), cl.fleet.fleet_id)
    from vault_raft.crypto import opaque
    _, ke1 = opaque.ClientLogin.start(b"a guess")
    before = cl.status(leader)["commit_index"]
    for name, make in sorted(BAD.items()):
        tok = make(iss)
        body: dict = {"user": b"alice", "ke1": ke1}
        if tok is not None:
            body["auth"] = tok
        status, out, _ = _post(cl, leader, "/v1/recover/start", body)
        assert status == 401 and out["error"] == "auth_failed", (name, status, out)
    assert cl.status(leader)["commit_index"] == before  # none of them cost a commit
    good = T.mint("acme", iss.acme, b"alice", iss.aud)
    status, out, _ = _post(cl, leader, "/v1/recover/start",
                           {"user": b"alice", "ke1": ke1, "auth": good})
    assert status == 200, out  # the control: the same request with a good token is counted
    assert cl.status(leader)["commit_index"] == before + 1


@pytest.mark.cluster
def test_a_flood_is_answered_429_while_another_user_recovers(cluster_factory):
    cl = cluster_factory(3)
    T.add_tenant(cl.dir, "acme", limits={"user_rate": 2.0, "user_burst": 4.0})
    app = T.local_token_source(cl.dir, cl.fleet.fleet_id, "acme")
    cli = C.Client(os.path.join(cl.dir, "fleet.json"), token=app)
    cli.enroll("carol", "carol's code", b"carol's key")
    from vault_raft.crypto import opaque
    _, ke1 = opaque.ClientLogin.start(b"a guess")
    statuses, retry = [], None
    for _ in range(20):  # one user floods
        status, out, ra = _post(cl, cl.leader(), "/v1/recover/start",
                                {"user": b"mallory", "ke1": ke1, "auth": app(b"mallory")})
        statuses.append(status)
        retry = retry or ra
    assert statuses.count(429) >= 10 and retry is not None and int(retry) >= 1, statuses
    assert cli.recover("carol", "carol's code").secret == b"carol's key"  # others are served


@pytest.mark.cluster
def test_nodes_without_a_tenant_list_fail_closed_until_one_arrives(cluster_factory):
    cl = cluster_factory(3, start=False)
    tl = T.load_list(cl.dir)
    assert tl is not None
    for nid in cl.ids:  # the operator forgot to copy the list to the nodes
        os.unlink(os.path.join(cl.node_dir(nid), T.TENANTS_FILE))
    cl.start()
    cl.wait_leader(30)
    cli = C.Client(os.path.join(cl.dir, "fleet.json"), timeout=3)
    with pytest.raises(C.Unavailable):  # 503, nothing proposed: not an open door
        cli.enroll("alice", "code", b"key")
    T.publish_list(cl.dir, tl)  # the nodes pick it up without a restart
    assert cli.enroll("alice", "code", b"key") == 10
    no_token = C.Client(cl.fleet, token=lambda u: "")
    with pytest.raises(C.NotAuthorized):
        no_token.recover("alice", "code")
