"""The witness log: co-signing rules, durability across restarts, and client
verification; registration of operator keys and the limits (issue 15)."""
import os

import pytest

from vault_raft.trust import bundle as B
from vault_raft.trust.witness import (
    Limits,
    NotRegistered,
    OperatorRegistry,
    RateLimited,
    TooLarge,
    WitnessLog,
    WitnessLogCorrupt,
    WitnessRefused,
)

NOW = 1_800_000_000


def _bundle(epoch, fleet="f1", key=b"k" * 32, prev=bytes(32)):
    entry = B.FleetEntry("fa", "current", key, b"e" * 32, (), 10, ("http://127.0.0.1:1",))
    return B.Bundle(fleet, epoch, (entry,), NOW - 5, NOW + 100, prev)


def _signed(w: WitnessLog, op_sk, b: B.Bundle, state: B.TrustState) -> B.SignedBundle:
    canon = b.canonical()
    sig = op_sk.sign(canon)
    st, wsig, idx = w.cosign(canon, sig, op_sk.public_key().public_bytes_raw(), NOW)
    sth, sth_sig = w.tree_head(NOW, b.namespace)
    size = w.size
    return B.SignedBundle(canon, sig, st, wsig, idx, w.inclusion(idx, size), sth, sth_sig,
                          w.consistency(state.tree_size, size))


def test_rules_and_restart(tmp_path):
    wsk, _ = B.new_signing_key()
    op_sk, op_pk = B.new_signing_key()
    path = str(tmp_path / "witness.log")
    w = WitnessLog(path, wsk)
    w.registry.add(op_pk)
    state = B.TrustState()
    b1 = _bundle(1)
    B.verify(_signed(w, op_sk, b1, state), op_pk, w.public_key, state, NOW)
    # a retry of the same bundle gets the same co-signature, and logs nothing new
    size = w.size
    assert w.cosign(b1.canonical(), op_sk.sign(b1.canonical()), op_pk, NOW + 5)[2] == 0
    assert w.size == size
    with pytest.raises(WitnessRefused, match="another operator"):
        other_op = B.new_signing_key()[0]
        w.registry.add(other_op.public_key().public_bytes_raw())
        b2 = _bundle(2)
        w.cosign(b2.canonical(), other_op.sign(b2.canonical()),
                 other_op.public_key().public_bytes_raw(), NOW)
    with pytest.raises(WitnessRefused, match="exactly one"):
        b3 = _bundle(3)
        w.cosign(b3.canonical(), op_sk.sign(b3.canonical()), op_pk, NOW)
    with pytest.raises(WitnessRefused, match="epoch 1 was already"):
        other = _bundle(1, key=b"x" * 32)
        w.cosign(other.canonical(), op_sk.sign(other.canonical()), op_pk, NOW)
    with pytest.raises(B.BadOperatorSignature):
        b2 = _bundle(2)
        w.cosign(b2.canonical(), B.new_signing_key()[0].sign(b2.canonical()), op_pk, NOW)
    B.verify(_signed(w, op_sk, _bundle(1, fleet="f2"), state), op_pk, w.public_key, state, NOW)
    root_before = w.tree_head(NOW)[0]
    w.close()
    # restart: same history, same root; the rules still remember what was published
    w2 = WitnessLog(path, wsk)
    assert w2.tree_head(NOW)[0] == root_before
    with pytest.raises(WitnessRefused):
        b1b = _bundle(1, key=b"y" * 32)
        w2.cosign(b1b.canonical(), op_sk.sign(b1b.canonical()), op_pk, NOW)
    B.verify(_signed(w2, op_sk, _bundle(2, prev=b1.digest), state), op_pk, w2.public_key, state,
             NOW)
    w2.close()


def test_damaged_log_refuses_to_start(tmp_path):
    wsk, _ = B.new_signing_key()
    op_sk, op_pk = B.new_signing_key()
    path = str(tmp_path / "witness.log")
    w = WitnessLog(path, wsk)
    w.registry.add(op_pk)
    b = _bundle(1)
    w.cosign(b.canonical(), op_sk.sign(b.canonical()), op_pk, NOW)
    w.close()
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(WitnessLogCorrupt):
        WitnessLog(path, wsk)


# ------------------------------------------ registration and limits (issue 15)

def _cosign(w, sk, b):
    c = b.canonical()
    return w.cosign(c, sk.sign(c), sk.public_key().public_bytes_raw(), NOW)


def test_only_registered_keys_create_namespaces(tmp_path):
    wsk, _ = B.new_signing_key()
    op_sk, op_pk = B.new_signing_key()
    path = str(tmp_path / "witness.log")
    w = WitnessLog(path, wsk)
    with pytest.raises(NotRegistered, match="not registered"):
        _cosign(w, op_sk, _bundle(1))
    assert w.size == 0
    assert w.registry.add(op_pk, "acme's operator") and not w.registry.add(op_pk)
    _cosign(w, op_sk, _bundle(1))
    # unregistered: no new namespace, but the ones it created stay its own
    assert w.registry.remove(op_pk)
    _cosign(w, op_sk, _bundle(2))
    with pytest.raises(NotRegistered):
        _cosign(w, op_sk, _bundle(1, fleet="f2"))
    # the registry is re-read when the file changes (a running witness)
    other = OperatorRegistry(w.registry.path)
    other.add(op_pk)
    _cosign(w, op_sk, _bundle(1, fleet="f2"))
    # a damaged registry opens no door
    with open(w.registry.path, "w") as f:
        f.write("{not json")
    with pytest.raises(NotRegistered, match="unreadable"):
        _cosign(w, op_sk, _bundle(1, fleet="f3"))
    _cosign(w, op_sk, _bundle(3))  # an existing namespace goes on
    w.close()
    # a log from before registration existed (no operators.json): same rules on restart
    os.remove(w.registry.path)
    w2 = WitnessLog(path, wsk)
    _cosign(w2, op_sk, _bundle(4))
    with pytest.raises(NotRegistered):
        _cosign(w2, op_sk, _bundle(1, fleet="f4"))
    w2.close()


def test_size_cap_and_rate_limits(tmp_path):
    wsk, _ = B.new_signing_key()
    a_sk, a_pk = B.new_signing_key()
    b_sk, b_pk = B.new_signing_key()
    t = [1000.0]
    w = WitnessLog(str(tmp_path / "witness.log"), wsk, clock=lambda: t[0],
                   limits=Limits(max_bundle_bytes=600, operator_per_minute=6, operator_burst=2,
                                 log_per_minute=60, log_burst=3))
    w.registry.add(a_pk)
    w.registry.add(b_pk)
    big = B.Bundle("big", 1, (B.FleetEntry("fa", "current", b"k" * 32, b"e" * 32, (), 10,
                                           ("http://127.0.0.1:1",) * 40),), NOW, NOW + 1)
    with pytest.raises(TooLarge):
        _cosign(w, a_sk, big)
    _cosign(w, a_sk, _bundle(1))
    _cosign(w, a_sk, _bundle(2))
    with pytest.raises(RateLimited) as ei:  # a's burst of 2 is spent: one every 10 s
        _cosign(w, a_sk, _bundle(3))
    assert 9 < ei.value.retry_after <= 10
    # a retry of a logged bundle grows nothing and is answered at once
    assert _cosign(w, a_sk, _bundle(2))[2] == 1
    _cosign(w, b_sk, _bundle(1, fleet="g"))
    with pytest.raises(RateLimited):  # the log's burst of 3 is spent
        _cosign(w, b_sk, _bundle(2, fleet="g"))
    t[0] += 10
    _cosign(w, a_sk, _bundle(3))
    assert w.size == 4
    # refusals cost no token: a flood of bad signatures leaves the key its rate
    t[0] += 60
    for _ in range(50):
        c = _bundle(4).canonical()
        with pytest.raises(B.BadOperatorSignature):
            w.cosign(c, B.new_signing_key()[0].sign(c), a_pk, NOW)
    _cosign(w, a_sk, _bundle(4))
    w.close()


def test_heads_name_the_namespaces_newest_bundle_as_of_their_size(tmp_path):
    wsk, wpk = B.new_signing_key()
    op_sk, op_pk = B.new_signing_key()
    w = WitnessLog(str(tmp_path / "witness.log"), wsk)
    w.registry.add(op_pk)
    b1, x1, b2 = _bundle(1), _bundle(1, fleet="x"), _bundle(2, prev=_bundle(1).digest)
    for b in (b1, x1, b2):
        _cosign(w, op_sk, b)
    for size, epoch, digest in ((0, 0, bytes(32)), (1, 1, b1.digest), (2, 1, b1.digest),
                                (3, 2, b2.digest)):
        _, sth, sig = w.page(0, size, NOW, "f1")
        h = B.parse_head(sth)
        assert (h.size, h.namespace, h.epoch, h.digest) == (size, "f1", epoch, digest)
    assert B.parse_head(w.page(0, 3, NOW)[1]).epoch == 0  # no namespace asked
    assert B.parse_head(w.tree_head(NOW, "x")[0]).epoch == 1
    w.close()


@pytest.mark.cluster
def test_witness_http_refusals_and_the_register_commands(tmp_path):
    """Over HTTP, with a witness process: 403 for an unregistered key's new
    namespace, 413 past the size cap, 429 with Retry-After past the rate."""
    import http.client
    import json

    from conftest import free_base_port, vault_cli

    from vault_raft.api import binding as P
    from vault_raft.ops import witness_server
    d = str(tmp_path / "w")
    port = free_base_port(1) + 1
    assert vault_cli("witness", "init", "--dir", d, "--port", str(port)).returncode == 0
    cfg = json.load(open(os.path.join(d, "witness.json")))
    assert cfg["limits"]["max_bundle_bytes"] == 65536  # the defaults are written out
    cfg["limits"].update(operator_burst=1, operator_per_minute=1)
    json.dump(cfg, open(os.path.join(d, "witness.json"), "w"))
    op_sk, op_pk = B.new_signing_key()
    proc = witness_server.spawn(d)
    try:
        def post(b, sk=op_sk, raw=None):
            c = b.canonical()
            body = raw or P.pack({"bundle": c, "operator_sig": sk.sign(c),
                                  "operator_key": sk.public_key().public_bytes_raw()})
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/v1/cosign", body=body,
                          headers={"Content-Type": P.CONTENT_TYPE})
            r = conn.getresponse()
            out = (r.status, P.unpack(r.read()), r.getheader("Retry-After"))
            conn.close()
            return out
        status, out, _ = post(_bundle(1))
        assert status == 403 and out["error"] == "not_registered", out
        r = vault_cli("witness", "register", "--dir", d, "--operator-key", op_pk.hex(),
                      "--note", "acme")
        assert r.returncode == 0, r.stderr
        r = vault_cli("witness", "operators", "--dir", d)
        assert r.returncode == 0 and op_pk.hex() in r.stdout and "acme" in r.stdout
        assert post(_bundle(1))[0] == 200  # the running witness sees the new key
        status, out, retry = post(_bundle(2))
        assert status == 429 and out["error"] == "rate_limited" and int(retry) >= 1
        assert post(_bundle(1), raw=b"\x00" * 70_000)[0] == 413
        assert vault_cli("witness", "unregister", "--dir", d, "--operator-key",
                         op_pk.hex()).returncode == 0
        assert post(_bundle(1, fleet="f9"))[0] == 403
        assert vault_cli("witness", "unregister", "--dir", d, "--operator-key",
                         op_pk.hex()).returncode == 1
    finally:
        witness_server.stop(proc)
