"""Fleet trust end to end, with real processes: the witness, two local clusters,
the operator's commands and client processes (issue 6, acceptance 3), plus
deployment evidence and the monitor."""
import os
import random
import threading

import msgpack
import pytest
from conftest import app_tenant, fast_ksf, vault_cli

from vault_raft import client as C
from vault_raft.fleet.operator import DEPLOYMENT_FILE
from vault_raft.ops.cluster import wait_until
from vault_raft.trust import deployment as D


@pytest.mark.cluster
def test_publish_verify_deployment_and_audit_commands(tmp_path, witness, cluster_factory):
    url, wdir, _ = witness
    fa = cluster_factory(3)
    op = str(tmp_path / "op")
    r = vault_cli("operator", "init", "--dir", op, "--namespace", "acme", "--witness", url,
                  "--witness-key", f"@{wdir}/witness.pub")
    assert r.returncode == 0, r.stderr
    client = os.path.join(op, "client.json")
    assert vault_cli("fleet", "verify", "--client", client).returncode == 6  # nothing published
    r = vault_cli("fleet", "publish", "--fleet", fa.dir, "--operator", op)
    assert r.returncode == 0, r.stderr
    assert "epoch 1" in r.stdout
    r = vault_cli("fleet", "verify", "--client", client)
    assert r.returncode == 0 and "epoch 1" in r.stdout, r.stderr
    r = vault_cli("fleet", "verify-deployment", "--client", client)
    assert r.returncode == 0 and "OK, 3 nodes" in r.stdout, r.stdout + r.stderr
    # the users' commands work through client.json, with the app's token for the user
    token = app_tenant([fa.dir], "acme")(b"u")
    secret = tmp_path / "s.bin"
    secret.write_bytes(b"backup key")
    r = vault_cli("enroll", "--client", client, "--user", "u", "--secret-file", str(secret),
                  env={"VAULT_RECOVERY_CODE": "code", "VAULT_TOKEN": token})
    assert r.returncode == 0, r.stderr
    r = vault_cli("recover", "--client", client, "--user", "u", "--out", "-",
                  env={"VAULT_RECOVERY_CODE": "code", "VAULT_TOKEN": token})
    assert r.returncode == 0 and r.stdout == "backup key", r.stderr
    r = vault_cli("recover", "--client", client, "--user", "u", "--out", "-",
                  env={"VAULT_RECOVERY_CODE": "code"})  # no token: refused, nothing proposed
    assert r.returncode == 7, r.stderr
    state = str(tmp_path / "audit.json")
    r = vault_cli("audit", "verify", "--witness", url, "--witness-key", f"@{wdir}/witness.pub",
                  "--state", state)
    assert r.returncode == 0 and "epoch   1" in r.stdout and "audit passed" in r.stdout, r.stdout
    # a second publish of the same fleet: epoch 2, and the monitor sees both
    assert vault_cli("fleet", "publish", "--fleet", fa.dir, "--operator", op).returncode == 0
    r = vault_cli("audit", "verify", "--witness", url, "--witness-key", f"@{wdir}/witness.pub",
                  "--state", state)
    assert r.returncode == 0 and "epoch   2" in r.stdout, r.stdout
    # the witness refuses another operator key for this namespace (the rule, over HTTP)
    op2 = str(tmp_path / "op2")
    assert vault_cli("operator", "init", "--dir", op2, "--namespace", "acme", "--witness", url,
                     "--witness-key", f"@{wdir}/witness.pub").returncode == 0
    r = vault_cli("fleet", "publish", "--fleet", fa.dir, "--operator", op2)
    assert r.returncode == 1 and "another operator key" in r.stderr, r.stderr
    assert vault_cli("fleet", "verify", "--client", client).returncode == 0  # still epoch 2
    # a wrong witness key: the monitor fails
    r = vault_cli("audit", "verify", "--witness", url, "--witness-key", "00" * 32,
                  "--state", str(tmp_path / "a2.json"))
    assert r.returncode == 1 and "FAIL" in r.stdout
    # the record the nodes serve is the one the bundle commits to
    dep = msgpack.unpackb(open(os.path.join(fa.dir, DEPLOYMENT_FILE), "rb").read())
    tc = C.TrustedClient(client, str(tmp_path / "t.json"))
    D.verify(dep["record"], dep["operator_sig"], tc.config.operator_key, tc.verify_fleet().current)


def _two_fleets(tmp_path, witness, cluster_factory):
    """Two running fleets (fast KSF), the operator of namespace acme with the
    first published, and one app tenant registered on both: (fa, fb, operator
    directory, client.json, the app's token source)."""
    url, wdir, _ = witness
    fa, fb = cluster_factory(3, start=False), cluster_factory(3, start=False)
    for cl in (fa, fb):
        fast_ksf(cl.dir)
        cl.start()
    for cl in (fa, fb):
        cl.wait_leader(30)
        cl.wait_healthy(timeout=30)
    op = str(tmp_path / "op")
    assert vault_cli("operator", "init", "--dir", op, "--namespace", "acme", "--witness", url,
                     "--witness-key", f"@{wdir}/witness.pub").returncode == 0
    assert vault_cli("fleet", "publish", "--fleet", fa.dir, "--operator", op).returncode == 0
    return fa, fb, op, os.path.join(op, "client.json"), app_tenant([fa.dir, fb.dir], "acme")


@pytest.mark.cluster
def test_rotation_while_clients_keep_recovering(tmp_path, witness, cluster_factory):
    fa, fb, op, client, app = _two_fleets(tmp_path, witness, cluster_factory)
    users = {f"user{i}": (f"code-{i}", os.urandom(16)) for i in range(6)}
    setup = C.TrustedClient(client, str(tmp_path / "setup.json"), token=app)
    for u, (code, secret) in users.items():
        setup.enroll(u, code, secret)

    rotating = threading.Event()  # set before the rotate command starts
    rotated = threading.Event()  # set after it finished
    stop = threading.Event()
    log, errors = [], []

    def worker(k, mine):
        """A client process per recovery: ``vault-raft recover --client``."""
        state = str(tmp_path / f"state{k}.json")
        rng = random.Random(k)
        while not stop.is_set():
            u = rng.choice(mine)
            after = rotated.is_set()  # started after the rotation was published
            r = vault_cli("recover", "--client", client, "--state", state, "--user", u,
                          "--out", str(tmp_path / f"out{k}"), "--force", "--timeout", "15",
                          env={"VAULT_RECOVERY_CODE": users[u][0],
                               "VAULT_TOKEN": app(u.encode())})
            if r.returncode == 5:  # unavailable: try again
                continue
            if r.returncode != 0:
                errors.append(f"{u}: exit {r.returncode}: {r.stderr}")
                return
            secret = open(tmp_path / f"out{k}", "rb").read()
            before = not rotating.is_set()  # ended before the rotation began
            log.append((u, before, after, "moved" in r.stderr, secret))

    names = sorted(users)
    threads = [threading.Thread(target=worker, args=(k, names[k::3])) for k in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(log) >= 3 or errors, 60, what="recoveries before the rotation")
        rotating.set()
        r = vault_cli("fleet", "rotate", "--to", fb.dir, "--operator", op)
        assert r.returncode == 0, r.stderr
        assert "retiring" in r.stdout
        rotated.set()

        def all_recovered_after():
            return errors or {u for u, _, after, *_ in log if after} >= set(users)
        wait_until(all_recovered_after, 120, what="every user to recover after the rotation")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert all(secret == users[u][1] for u, _, _, _, secret in log)  # always the enrolled one
    moved = [u for u, _, _, m, _ in log if m]
    assert sorted(moved) == sorted(users)  # each user moved exactly once
    assert not any(m for _, before, _, m, _ in log if before)  # and never before the rotation
    # every user now lives on the new fleet, and the old fleet's records are gone
    new = C.Client(os.path.join(fb.dir, "fleet.json"), token=app)
    old = C.Client(os.path.join(fa.dir, "fleet.json"), token=app)
    for u, (code, secret) in users.items():
        assert new.recover(u, code).secret == secret
        with pytest.raises(C.WrongCode):  # deleted: the fleet answers like for a stranger
            old.recover(u, code)


@pytest.mark.cluster
def test_no_squatting_during_a_rotation(tmp_path, witness, cluster_factory):
    """An attacker without the victim's token cannot take her id on the new fleet;
    and when another record holds it there anyway, her recovery still returns
    her secret and leaves her old record in place."""
    fa, fb, op, client, app = _two_fleets(tmp_path, witness, cluster_factory)
    owner = C.TrustedClient(client, str(tmp_path / "owner.json"), token=app)
    owner.enroll("erin", "erin's code", b"erin's key")
    owner.enroll("fay", "fay's code", b"fay's key")
    assert vault_cli("fleet", "rotate", "--to", fb.dir, "--operator", op).returncode == 0
    # the attacker, with a token of its own (or none), tries to enroll erin on the new fleet
    new_fleet = os.path.join(fb.dir, "fleet.json")
    for token in (lambda u: app(b"mallory"), None):
        attacker = C.Client(new_fleet, token=token or (lambda u: ""))
        with pytest.raises(C.NotAuthorized):
            attacker.enroll("erin", "mallory's code", b"mallory's key")
    rec = owner.recover("erin", "erin's code")
    assert rec.secret == b"erin's key" and rec.migrated_from == fa.fleet.fleet_id
    # another record holds fay's id on the new fleet (forced here with a valid token)
    C.Client(new_fleet, token=app).enroll("fay", "someone else's code", b"other",
                                          max_attempts=2)
    rec = owner.recover("fay", "fay's code")
    assert rec.secret == b"fay's key" and rec.migration_conflict
    with pytest.raises(C.VaultError, match="could not be moved"):  # no change meanwhile
        owner.change_secret("fay", "fay's code", b"new")
    old = C.Client(os.path.join(fa.dir, "fleet.json"), token=app)
    assert old.recover("fay", "fay's code").secret == b"fay's key"  # her old record is kept
    # her recoveries use the other record's attempts up; once it is destroyed, she moves
    for _ in range(4):
        rec = owner.recover("fay", "fay's code")
        assert rec.secret == b"fay's key"
        if rec.migrated_from:
            break
    assert rec.migrated_from == fa.fleet.fleet_id
    assert owner.recover("fay", "fay's code").fleet_id == fb.fleet.fleet_id
