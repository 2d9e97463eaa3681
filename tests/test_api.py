"""The node API against bad input, the change/delete flows, and process lifecycle."""
import json
import os
import signal
import stat

import msgpack
import pytest
from conftest import free_base_port, make_fleet, vault_cli

from vault_raft import client as C
from vault_raft.api import channel as CH
from vault_raft.crypto import opaque
from vault_raft.fleet.keystore import FileKeystore, KeystoreError
from vault_raft.ops.cluster import LocalCluster, wait_until


def _raw(cl, url, path, body: bytes, ctype="application/msgpack", method="POST"):
    conn = CH.connection(url, 5, cl.channel)  # TLS 1.3, pinned to the fleet CA
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data
    finally:
        conn.close()


@pytest.mark.cluster
def test_bad_input_gets_4xx_and_changes_nothing(cluster_factory):
    cl = cluster_factory()
    fleet = os.path.join(cl.dir, "fleet.json")
    cli = C.Client(fleet)
    cli.enroll("alice", "code", b"secret", max_attempts=5)
    url = cl.api[cl.ids[0]]
    token = cli.token
    assert token is not None  # the fleet's local tenant

    def pk(d):  # a body naming a valid user carries that user's token: the input is what's bad
        u = d.get("user") if isinstance(d, dict) else None
        if isinstance(u, bytes) and 1 <= len(u) <= 256:
            d = dict(d, auth=token(u))
        return msgpack.packb(d, use_bin_type=True)
    _, ke1 = opaque.ClientLogin.start(b"x")
    cases = [
        ("/v1/recover/start", b"\x00\xff garbage", "application/msgpack", 400),
        ("/v1/recover/start", pk([1, 2, 3]), "application/msgpack", 400),
        ("/v1/recover/start", pk({"user": b"alice"}), "application/json", 415),
        ("/v1/recover/start", pk({"user": b"alice", "ke1": b"short"}), "application/msgpack", 400),
        ("/v1/recover/start", pk({"user": b"alice", "ke1": bytes(96)}), "application/msgpack",
         400),  # identity elements: refused before counting
        ("/v1/recover/start", pk({"user": b"", "ke1": ke1}), "application/msgpack", 400),
        ("/v1/recover/start", pk({"user": b"u" * 300, "ke1": ke1}), "application/msgpack", 400),
        ("/v1/recover/start", pk({"user": 5, "ke1": ke1}), "application/msgpack", 400),
        ("/v1/recover/finish", pk({"user": b"alice", "token": b"t" * 50, "ke3": bytes(64)}),
         "application/msgpack", 401),
        ("/v1/enroll/finish", pk({"user": b"bob", "record": bytes(192), "upload": b"x"}),
         "application/msgpack", 400),
        ("/v1/enroll/start", pk({"user": b"bob", "request": bytes(32)}), "application/msgpack",
         400),
        ("/v1/manage", pk({"user": b"alice", "op": "delete", "token": b"t", "proof": bytes(32)}),
         "application/msgpack", 401),
        ("/v1/manage", pk({"user": b"alice", "op": "explode"}), "application/msgpack", 400),
        ("/v1/nope", pk({}), "application/msgpack", 404),
        ("/v1/recover/start", b"\x00" * (70 * 1024), "application/msgpack", 413),
    ]
    for path, body, ctype, want in cases:
        status, data = _raw(cl, url, path, body, ctype)
        assert status == want, (path, body[:40], status, data[:200])
        reply = msgpack.unpackb(data, raw=False)
        assert reply["error"] and "Traceback" not in reply["message"]
    # nothing was counted: the first wrong guess still leaves 4 of 5
    with pytest.raises(C.WrongCode) as exc:
        cli.recover("alice", "wrong")
    assert exc.value.attempts_left == 4
    status, data = _raw(cl, url, "/openapi.json", b"", method="GET")
    assert status == 200 and json.loads(data)["openapi"].startswith("3.")


@pytest.mark.cluster
def test_token_cannot_be_replayed_or_moved(cluster_factory):
    cl = cluster_factory()
    cli = C.Client(os.path.join(cl.dir, "fleet.json"))
    cli.enroll("alice", "code a", b"secret a")
    cli.enroll("bob", "code b", b"secret b")
    rec = cli.recover("alice", "code a")
    # the same token cannot release twice, nor serve another user
    login, ke1 = opaque.ClientLogin.start(b"code a", ksf=cli.fleet.ksf, context=cli.fleet.context)
    st, out = cli.post("/v1/recover/start", {"user": b"alice", "ke1": ke1})
    done = login.finish(out["ke2"])
    st, _ = cli.post("/v1/recover/finish", {"user": b"alice", "token": out["token"],
                                            "ke3": done.ke3})
    assert st == 200
    st, _ = cli.post("/v1/recover/finish", {"user": b"alice", "token": out["token"],
                                            "ke3": done.ke3})
    assert st == 401
    st, _ = cli.post("/v1/recover/finish", {"user": b"bob", "token": out["token"],
                                            "ke3": done.ke3})
    assert st == 401
    assert rec.secret == b"secret a"


@pytest.mark.cluster
def test_change_and_delete_flows_via_cli(cluster_factory, tmp_path):
    cl = cluster_factory()
    fleet = os.path.join(cl.dir, "fleet.json")
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.write_bytes(b"first secret")
    s2.write_bytes(b"second secret")
    assert vault_cli("enroll", "--fleet", fleet, "--user", "kim", "--secret-file", str(s1),
                     stdin="old code\n").returncode == 0
    r = vault_cli("change-code", "--fleet", fleet, "--user", "kim", stdin="wrong\nnew code\n")
    assert r.returncode == 3
    r = vault_cli("change-code", "--fleet", fleet, "--user", "kim", stdin="old code\nnew code\n")
    assert r.returncode == 0, r.stderr
    assert "1 wrong code" in r.stderr  # the 'wrong' attempt just before
    r = vault_cli("recover", "--fleet", fleet, "--user", "kim", "--out", "-", stdin="old code\n")
    assert r.returncode == 3
    r = vault_cli("change-secret", "--fleet", fleet, "--user", "kim", "--secret-file", str(s2),
                  stdin="new code\n")
    assert r.returncode == 0, r.stderr
    assert "1 wrong code" in r.stderr  # the failed 'old code' guess is reported to the owner
    out = tmp_path / "out"
    r = vault_cli("recover", "--fleet", fleet, "--user", "kim", "--out", str(out),
                  stdin="new code\n")
    assert r.returncode == 0 and out.read_bytes() == b"second secret"
    assert "wrong code" not in r.stderr
    r = vault_cli("delete", "--fleet", fleet, "--user", "kim", stdin="new code\n")
    assert r.returncode == 0, r.stderr
    # deleted: indistinguishable from a wrong code, and the user can enroll again
    r = vault_cli("recover", "--fleet", fleet, "--user", "kim", "--out", "-", stdin="new code\n")
    assert r.returncode == 3
    assert vault_cli("enroll", "--fleet", fleet, "--user", "kim", "--secret-file", str(s1),
                     stdin="third code\n").returncode == 0


@pytest.mark.cluster
def test_cluster_up_down_via_cli_and_clean_sigterm(tmp_path):
    d = make_fleet(tmp_path)
    try:
        r = vault_cli("cluster", "up", "--dir", d)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "leader" in r.stdout
        cl = LocalCluster(d)
        pids = {n: cl.pid(n) for n in cl.ids}
        assert all(pids.values())
        n1 = pids["n1"]
        assert n1 is not None
        r = vault_cli("cluster", "up", "--dir", d)  # idempotent
        assert r.returncode == 0 and "nothing" in r.stderr
        assert {n: cl.pid(n) for n in cl.ids} == pids
        os.kill(n1, signal.SIGTERM)
        wait_until(lambda: not cl.pid("n1"), 10, what="n1 to stop on SIGTERM")
        assert b"stopping" in open(os.path.join(d, "n1", "node.log"), "rb").read()
        r = vault_cli("cluster", "down", "--dir", d)
        assert r.returncode == 0
        assert not cl.running()
        r = vault_cli("cluster", "status", "--dir", d)
        assert r.returncode == 5 and "down" in r.stdout
    finally:
        LocalCluster(d).stop(timeout=5)


def test_fleet_init_refuses_bad_input(tmp_path):
    d = str(tmp_path / "f")
    for args in (["--nodes", "2"], ["--nodes", "11"], ["--base-port", "80"],
                 ["--host", "not-an-ip"], ["--max-attempts", "0"]):
        r = vault_cli("fleet", "init", "--dir", d, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert not os.path.exists(os.path.join(d, "fleet.json"))
    port = str(free_base_port(3))  # not a fixed one: other runs may hold it
    assert vault_cli("fleet", "init", "--dir", d, "--base-port", port).returncode == 0
    r = vault_cli("fleet", "init", "--dir", d, "--base-port", port)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr


def test_keystore_is_private(tmp_path):
    ks = FileKeystore.generate("f00d")
    p = str(tmp_path / "ks")
    ks.save(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert FileKeystore.load(p).opaque_setup() == ks.opaque_setup()
    os.chmod(p, 0o644)
    with pytest.raises(KeystoreError, match="chmod 600"):
        FileKeystore.load(p)
    os.chmod(p, 0o600)
    open(p, "wb").write(b"\x93garbage")
    with pytest.raises(KeystoreError):
        FileKeystore.load(p)
    assert "seal" not in repr(ks) and ks._seal_key.hex() not in repr(ks)
