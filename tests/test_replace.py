"""Replacing a node of a running fleet (issue 19, acceptance 2 and 3).

A published 3-node fleet serves a load of guesses (owners recovering and
writing, attackers guessing against records with small limits) while
``vault-raft fleet replace --node n2 --host 127.0.0.2`` removes n2, revokes its
certificate, adds a new n2 at another address and republishes.  Then: the
chaos checkers pass (guess limit, no lost acknowledged write, released
secrets, linearizable records), the old certificate is refused by the
survivors, ``fleet verify-deployment`` and ``audit verify`` pass and show the
new node, and a survivor restarted from its journal has the same membership.
"""
import glob
import json
import os
import random
import threading
import time
from functools import partial

import msgpack
import pytest
from conftest import fast_ksf, free_base_port, vault_cli
from test_membership import _handshake_refused

from vault_raft.chaos.campaign import Actor
from vault_raft.chaos.checker import check_all, require_pass
from vault_raft.chaos.history import History
from vault_raft.fleet.config import STATEMENTS_FILE, FleetInfo
from vault_raft.fleet.create import is_local_address
from vault_raft.fleet.tenants import local_token_source
from vault_raft.ops.cluster import LocalCluster, wait_until

NEW_HOST = "127.0.0.2"


def _node_key(fleet_dir, nid) -> str:
    with open(os.path.join(fleet_dir, STATEMENTS_FILE), "rb") as f:
        for st, _ in msgpack.unpackb(f.read(), raw=False):
            fields = msgpack.unpackb(st, raw=False)
            if fields[2] == nid:
                return fields[3].hex()
    raise AssertionError(f"no statement for {nid}")


def _enrolled(actor: Actor, user: str, code: bytes, limit: int) -> bool:
    return actor.enroll(user, code, os.urandom(16), limit) in ("ok", "exists")


def _status(cl: LocalCluster, nid: str) -> dict:
    st = cl.status(nid)
    assert st is not None, f"{nid} does not answer"
    return st


def _refused_by(cl, nid, files) -> bool:
    """Node ``nid`` refuses a Raft connection with this certificate: it closes
    the connection without a frame, and counts a refusal (the counter tells a
    refusal from a connection the real node's own connection displaced)."""
    addr = json.load(open(os.path.join(cl.dir, nid, "node.json")))["raft_addr"]
    before = _status(cl, nid)["raft_port"]["refused"]
    closed = _handshake_refused(addr, files, os.path.join(cl.dir, "ca.crt"))
    wait_until(lambda: _status(cl, nid)["raft_port"]["refused"] > before, 5, 0.05,
               f"{nid} to count the refusal")
    return closed


def test_replace_usage_errors(tmp_path, cluster_factory):
    cl = cluster_factory(3, start=False)
    r = vault_cli("fleet", "replace", "--dir", cl.dir, "--node", "n7", "--host", NEW_HOST)
    assert r.returncode == 2 and "no node 'n7'" in r.stderr, r.stderr
    r = vault_cli("fleet", "replace", "--dir", cl.dir, "--node", "n2", "--host", "not a host!")
    assert r.returncode == 2 and "--host" in r.stderr, r.stderr
    # no node runs: no leader, nothing changed
    r = vault_cli("fleet", "replace", "--dir", cl.dir, "--node", "n2", "--host", NEW_HOST,
                  "--timeout", "2")
    assert r.returncode == 5 and "leader" in r.stderr, r.stderr
    assert json.load(open(os.path.join(cl.dir, "n2", "node.json")))["raft_addr"].startswith(
        "127.0.0.1:")


@pytest.mark.cluster
def test_replacing_a_node_under_a_load_of_guesses(tmp_path, witness, cluster_factory):
    if not is_local_address(NEW_HOST):
        pytest.skip(f"{NEW_HOST} is not an address of this machine")
    url, wdir, _ = witness
    cl = cluster_factory(3)
    fast_ksf(cl.dir)
    op = str(tmp_path / "op")
    r = vault_cli("operator", "init", "--dir", op, "--namespace", "acme", "--witness", url,
                  "--witness-key", f"@{wdir}/witness.pub")
    assert r.returncode == 0, r.stderr
    r = vault_cli("fleet", "publish", "--fleet", cl.dir, "--operator", op)
    assert r.returncode == 0, r.stderr
    old_key = _node_key(cl.dir, "n2")
    old_cert = (os.path.join(cl.dir, "n2", "tls.key"), os.path.join(cl.dir, "n2", "tls.crt"))
    with open(old_cert[0], "rb") as f, open(old_cert[1], "rb") as g:
        old_files = (str(tmp_path / "old.key"), str(tmp_path / "old.crt"))
        open(old_files[0], "wb").write(f.read())
        open(old_files[1], "wb").write(g.read())

    fleet = FleetInfo.load(os.path.join(cl.dir, "fleet.json"))
    token = local_token_source(cl.dir, fleet.fleet_id, lifetime=900)
    urls = dict(cl.api)  # shared with the actors: n2's entry changes with the replacement
    hist, limits = History(), {}
    setup = Actor("setup", fleet, hist, random.Random(1), urls, timeout=10, token=token)
    owners = [(f"owner-{i}", f"owner code {i}".encode()) for i in range(3)]
    victims = [f"victim-{i}" for i in range(8)]
    for user, code in owners:
        wait_until(partial(_enrolled, setup, user, code, 100), 30, 0.2, f"enrolling {user}")
    for v in victims:
        wait_until(partial(_enrolled, setup, v, b"the victim's code", 6), 30, 0.2,
                   f"enrolling {v}")
        limits[v] = 6
    stop = threading.Event()

    def owner(k, user, code):
        a = Actor(f"owner-{k}", fleet, hist, random.Random(100 + k), urls, token=token)
        while not stop.is_set():
            got = a.begin(user, code if a.rng.random() > 0.2 else b"typo")
            if got:
                done = a.complete(user, *got)
                if done and a.rng.random() > 0.6:
                    a.write(user, done, os.urandom(16))
            stop.wait(a.rng.uniform(0.01, 0.05))

    def attacker(k):
        a = Actor(f"attacker-{k}", fleet, hist, random.Random(200 + k), urls, token=token)
        while not stop.is_set():
            a.begin(a.rng.choice(victims), b"guess " + os.urandom(3).hex().encode())
            stop.wait(a.rng.uniform(0.02, 0.1))

    crashed = []

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 -- reported below
            crashed.append(repr(exc))
    threads = [threading.Thread(target=guarded, args=(owner, k, u, c), daemon=True)
               for k, (u, c) in enumerate(owners)]
    threads += [threading.Thread(target=guarded, args=(attacker, k), daemon=True)
                for k in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # the load runs before, during and after the replacement
        r = vault_cli("fleet", "replace", "--dir", cl.dir, "--node", "n2", "--host", NEW_HOST,
                      "--operator", op, timeout=180)
        assert r.returncode == 0, r.stderr
        assert "removed n2" in r.stderr and "added n2" in r.stderr, r.stderr
        new = LocalCluster(cl.dir)
        urls.update(new.api)
        replaced_at = hist.now()
        assert new.api["n2"].startswith(f"https://{NEW_HOST}:")
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not crashed, crashed
    new.wait_healthy(timeout=30)
    final = Actor("final", fleet, hist, random.Random(7), urls, timeout=10, token=token)
    for user, code in owners:
        def recovered(user=user, code=code):
            got = final.begin(user, code)
            return got and final.complete(user, *got, f="final")
        wait_until(recovered, 30, 0.3, f"a final recovery of {user}")
    hist.close_pending()
    verdicts = check_all(hist, limits, 20.0)
    require_pass(verdicts)
    served = [o for o in hist.ops if o.f == "begin" and o.outcome == "ok"]
    assert len(served) > 20, "the load did not run"
    writes = [o for o in hist.ops if o.f == "write" and o.outcome == "ok"]
    assert writes, "no acknowledged write to lose"
    assert any(o.node == "n2" and o.invoke > replaced_at for o in served), \
        "the new n2 served nothing"
    during = [o for o in served if o.invoke < replaced_at and o.complete is not None
              and o.complete > replaced_at - 10]
    assert during, "no guess was served while the replacement ran"

    # the old certificate is refused by the survivors (the fleet CA signed it)
    for nid in ("n1", "n3"):
        assert _refused_by(new, nid, old_files)
    st = _status(new, "n1")
    assert {m["node"]: m["addr"] for m in st["members"]}["n2"].startswith(NEW_HOST + ":")

    # clients and auditors see the new node
    client = os.path.join(op, "client.json")
    r = vault_cli("fleet", "verify-deployment", "--client", client)
    assert r.returncode == 0 and "OK, 3 nodes" in r.stdout, r.stdout + r.stderr
    new_key = _node_key(cl.dir, "n2")
    assert new_key != old_key
    assert f"n2   node key {new_key[:16]}" in r.stdout, r.stdout
    assert old_key[:16] not in r.stdout
    assert any(NEW_HOST in e for e in json.load(open(client))["endpoints"])
    r = vault_cli("audit", "verify", "--witness", url, "--witness-key", f"@{wdir}/witness.pub",
                  "--state", str(tmp_path / "audit.json"))
    assert r.returncode == 0 and "epoch   2" in r.stdout and "audit passed" in r.stdout, \
        r.stdout + r.stderr
    assert glob.glob(os.path.join(cl.dir, "replaced", "n2-*", "tls.crt"))

    # a survivor restarted from its journal has the same membership and still refuses
    new.stop(["n1"])
    new.start(["n1"])
    new.wait_healthy(timeout=30)
    st = _status(new, "n1")
    assert {m["node"]: m["addr"] for m in st["members"]}["n2"].startswith(NEW_HOST + ":")
    assert _refused_by(new, "n1", old_files)


@pytest.mark.cluster
def test_member_admin_refusals_and_replacing_the_leader(tmp_path, cluster_factory):
    """The admin op refuses what it must, clearly; replacing the node that
    leads moves leadership away first (a leader cannot remove itself)."""
    from vault_raft.api import http as W
    from vault_raft.node.admin import sign_request
    cl = cluster_factory(3)
    cl.transfer("n2")
    assert cl.wait_leader(10) == "n2"
    st = _status(cl, "n2")
    by_node = {m["node"]: m["addr"] for m in st["members"]}
    assert sorted(by_node) == ["n1", "n2", "n3"]
    fp = "00" * 32
    rem_n2 = {"change": "rem", "node": "n2", "addr": by_node["n2"], "cert_sha256": fp}
    code, out = cl.admin("n2", "member", rem_n2)
    assert code == 409 and out["reason"] == "is_leader", out
    code, out = cl.admin("n1", "member", rem_n2)
    assert code == 409 and out["reason"] == "not_leader", out
    code, out = cl.admin("n2", "member", dict(rem_n2, node="n3"))
    assert code == 409 and out["reason"] == "not_member", out
    code, out = cl.admin("n2", "member", dict(rem_n2, change="add", addr=by_node["n3"]))
    assert code == 409 and out["reason"] == "member", out
    code, out = cl.admin("n2", "member", dict(rem_n2, cert_sha256="xyz"))
    assert code == 400, out
    code, out = cl.admin("n2", "member", dict(rem_n2, addr="127.0.0.1:99999"))
    assert code == 400, out
    # signed with another key: refused before anything is looked at
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    body = sign_request(Ed25519PrivateKey.generate(), cl.fleet.fleet_id, "n2", "member",
                        rem_n2)
    code, out = W.call(cl.api["n2"], "POST", "/v1/admin", body, channel=cl.channel)
    assert code == 401, out
    assert len(_status(cl, "n1")["members"]) == 3  # nothing changed

    # replace the leader at another port of the same host
    base = free_base_port(1)
    old_files = (os.path.join(cl.dir, "n2", "tls.key"), os.path.join(cl.dir, "n2", "tls.crt"))
    keep = (str(tmp_path / "old.key"), str(tmp_path / "old.crt"))
    for src, dst in zip(old_files, keep, strict=True):
        open(dst, "wb").write(open(src, "rb").read())
    r = vault_cli("fleet", "replace", "--dir", cl.dir, "--node", "n2", "--host", "127.0.0.1",
                  "--raft-port", str(base + 1), "--api-port", str(base + 2), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "leadership moved from n2" in r.stderr, r.stderr
    new = LocalCluster(cl.dir)
    new.wait_healthy(timeout=30)
    members = {m["node"]: m["addr"] for m in _status(new, "n1")["members"]}
    assert members["n2"] == f"127.0.0.1:{base + 1}"
    assert _refused_by(new, "n3", keep)
    # replaced again at the same address (the disk died again): the revocation and
    # the new pin refuse the certificate it had, though its address is a member
    second = (str(tmp_path / "second.key"), str(tmp_path / "second.crt"))
    for src, dst in zip(old_files, second, strict=True):
        open(dst, "wb").write(open(src, "rb").read())
    # (--no-start: the new node runs on another machine; here the operator starts it after)
    r = vault_cli("fleet", "replace", "--dir", cl.dir, "--node", "n2", "--host", "127.0.0.1",
                  "--raft-port", str(base + 1), "--api-port", str(base + 2), "--no-start",
                  timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fleet export" in r.stderr and not new.pid("n2"), r.stderr
    new.start(["n2"])
    new.wait_healthy(timeout=30)
    members = {m["node"]: m["addr"] for m in _status(new, "n3")["members"]}
    assert members["n2"] == f"127.0.0.1:{base + 1}"
    assert _refused_by(new, "n3", second)
    assert _refused_by(new, "n3", keep)
