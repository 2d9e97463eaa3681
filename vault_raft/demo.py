"""``make demo``: a local 3-node cluster, enrollment, wrong guesses counting down, recovery."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from . import client as C
from .cluster import LocalCluster, free_base_port
from .fleet.config import init_fleet


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(directory: str | None = None, keep: bool = False) -> int:
    tmp = directory is None
    directory = directory or tempfile.mkdtemp(prefix="vault-raft-demo-")
    _say(f"== 1. fleet init: 3 nodes in {directory}")
    fleet = init_fleet(directory, 3, base_port=free_base_port(3), max_attempts=10)
    cluster = LocalCluster(directory)
    try:
        _say("== 2. cluster up: each node is its own process (Raft on 127.0.0.1)")
        cluster.start()
        t0 = time.monotonic()
        leader = cluster.wait_leader(30)
        _say(f"   leader {leader} elected after {time.monotonic() - t0:.1f}s")
        cluster.wait_healthy(timeout=30)
        _say(cluster.table())
        cli = C.Client(fleet)
        alice_secret = os.urandom(32)
        _say("\n== 3. enroll alice (max 3 attempts) and bob (default 10)")
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
        _say("\ndemo finished: every guess above was a majority commit before any answer.")
        return 0
    finally:
        if keep:
            _say(f"cluster left running; stop it with: vault-raft cluster down --dir {directory}")
        else:
            cluster.stop()
            if tmp:
                shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_demo())
