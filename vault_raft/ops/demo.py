"""``make demo``: a local 3-node cluster, enrollment, wrong guesses counting down, recovery."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from vault_raft import client as C
from vault_raft.fleet import tenants as T
from vault_raft.fleet.create import init_fleet
from vault_raft.fleet.keystore import load_signing_key
from vault_raft.fleet.operator import Operator, init_operator
from vault_raft.ops import witness_server
from vault_raft.ops.cluster import LocalCluster, free_base_port
from vault_raft.ops.witness_server import init_witness


def _say(msg: str) -> None:
    print(msg, flush=True)


def _start_witness(directory: str) -> tuple[subprocess.Popen, str, bytes, str]:
    port = free_base_port(1, start=7000) + 1
    wdir = os.path.join(directory, "witness")
    pk = init_witness(wdir, port=port)
    return witness_server.spawn(wdir), f"http://127.0.0.1:{port}", pk, wdir


def run_demo(directory: str | None = None, keep: bool = False) -> int:
    tmp = directory is None
    directory = directory or tempfile.mkdtemp(prefix="vault-raft-demo-")
    fleet_dir = os.path.join(directory, "fleet")
    _say(f"== 1. fleet init: 3 nodes in {fleet_dir}")
    init_fleet(fleet_dir, 3, base_port=free_base_port(3), max_attempts=10)
    cluster = LocalCluster(fleet_dir)
    clusters = [cluster]
    witness = None
    try:
        _say("== 2. cluster up: each node is its own process (Raft on 127.0.0.1)")
        cluster.start()
        t0 = time.monotonic()
        leader = cluster.wait_leader(30)
        _say(f"   leader {leader} elected after {time.monotonic() - t0:.1f}s")
        cluster.wait_healthy(timeout=30)
        _say(cluster.table())
        _say("\n== 3. trust: a witness process; the operator publishes a signed bundle")
        witness, wurl, wpk, wdir = _start_witness(directory)
        client_json = init_operator(os.path.join(directory, "operator"), "demo", wurl, wpk)
        op = Operator(os.path.join(directory, "operator"))
        witness_server.registry(wdir).add(op.pk, "the demo's operator")
        _say("   the witness's operator registered the operator key (only registered keys "
             "create namespaces)")
        bundle = op.publish(fleet_dir)
        _say(f"   witness {wurl} (pid {witness.pid}) co-signed and logged epoch {bundle.epoch}")
        _say(f"   clients hold only {client_json}: operator + witness public keys")
        app_key = T.add_tenant(fleet_dir, "demo-app", audiences=("demo",))
        app = T.local_token_source(fleet_dir, "demo", "demo-app")  # the app's own server
        _say("   tenant demo-app registered (its key signs its users' tokens; every user "
             "request carries one)")
        cli = C.TrustedClient(client_json, token=app)
        cli.verify_fleet()
        _say("   client verified both signatures, validity, log inclusion; fleet keys trusted")
        _say(f"   channel: TLS 1.3 to {bundle.current.endpoints[0]} and the other nodes, pinned "
             "to the fleet CA the bundle names (no Web PKI)")
        alice_secret = os.urandom(32)
        _say("\n   enroll alice (max 3 attempts) and bob (default 10)")
        cli.enroll("alice", "correct horse battery staple", alice_secret, max_attempts=3)
        cli.enroll("bob", "bob's own code", b"bob's backup key")
        _say("   enrolled: OPAQUE record + secret sealed under the fleet key, majority-committed")
        _say("\n== 4. an attacker guesses alice's code")
        for guess in ("123456", "password", "letmein"):
            try:
                cli.recover("alice", guess)
            except C.WrongCode as exc:
                _say(f"   guess {guess!r:12} -> wrong code, {exc.attempts_left} attempts left "
                     "(exit 3)")
        try:
            cli.recover("alice", "qwerty")
        except C.NoRecord:
            _say("   guess 'qwerty'     -> limit reached: record destroyed for good (exit 4)")
        try:
            cli.recover("alice", "correct horse battery staple")
        except C.NoRecord:
            _say("   even the right code now gets: no such record (exit 4)")
        _say("\n== 5. bob recovers with his code")
        rec = cli.recover("bob", "bob's own code")
        _say(f"   recovered {rec.secret!r} (exit 0); failed attempts since last success: "
             f"{rec.failed_attempts}")
        _say("\n== 6. kill -9 the leader; a new one takes over and bob still recovers")
        cluster.kill(leader)
        t0 = time.monotonic()
        new_leader = cluster.wait_leader(30, [n for n in cluster.ids if n != leader])
        _say(f"   {leader} killed; {new_leader} leads after {time.monotonic() - t0:.1f}s")
        rec = cli.recover("bob", "bob's own code")
        _say(f"   recovered {rec.secret!r}")
        cluster.start([leader])
        cluster.wait_healthy(timeout=30)
        _say(f"   {leader} restarted and caught up:")
        _say(cluster.table())
        _say("\n== 7. rotation: a new fleet with new keys takes over")
        new_dir = os.path.join(directory, "fleet2")
        init_fleet(new_dir, 3, base_port=free_base_port(3), max_attempts=10)
        T.add_tenant(new_dir, "demo-app", audiences=("demo",),  # the same app, the same key
                     public_key=load_signing_key(app_key).public_key().public_bytes_raw())
        new_cluster = LocalCluster(new_dir)
        clusters.append(new_cluster)
        new_cluster.start()
        new_cluster.wait_leader(30)
        new_cluster.wait_healthy(timeout=30)
        b = Operator(os.path.join(directory, "operator")).rotate(new_dir)
        _say(f"   epoch {b.epoch}: fleet {b.current.fleet_id} current, "
             f"{b.retiring[0].fleet_id} retiring (co-signed by the witness)")
        rec = cli.recover("bob", "bob's own code")
        _say(f"   bob recovers {rec.secret!r} and is moved: re-enrolled on "
             f"{b.current.fleet_id}, his record on {rec.migrated_from} deleted")
        rec = cli.recover("bob", "bob's own code")
        _say(f"   next recovery is served by fleet {rec.fleet_id} directly")
        _say("\ndemo finished: every guess above was a majority commit before any answer.")
        return 0
    finally:
        if keep:
            for cl in clusters:
                _say(f"cluster left running; stop it with: vault-raft cluster down --dir {cl.dir}")
            if witness is not None:
                _say(f"witness left running as pid {witness.pid}")
        else:
            for cl in clusters:
                cl.stop()
            if witness is not None:
                witness_server.stop(witness)
            if tmp:
                shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_demo())
