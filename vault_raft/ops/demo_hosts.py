"""``vault-raft demo --hosts``: the demo with every node on its own host.

Where the machine allows it (root, iproute2's ``ip netns``), each node runs in
its own network namespace with its own address on a private bridge
(:class:`vault_raft.ops.netns.NetnsNet`), and a host is cut off by taking its
link down.  Elsewhere each node listens on its own loopback address
(``127.0.0.11``, ``.12``, ``.13``: Linux routes all of 127/8 to ``lo``), and
a host is "cut off" by killing its node (there is no link to take down).  The
demo says which it chose and why.  ``--hosts loopback`` forces the fallback,
``--hosts netns`` refuses to fall back.

Steps: fleet init with one address per node, cluster up, enroll, wrong
guesses, recovery; the leader's host cut off while the other two elect a
leader and keep serving (a guess counted, a recovery); the host back, caught
up, serving on its own.  Namespaces and node processes are removed (by PID)
when the demo ends, fails, or is interrupted (Ctrl-C, SIGTERM; a second one
waits for the clean-up).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from vault_raft import client as C
from vault_raft.errors import VaultRaftError
from vault_raft.fleet.create import init_fleet, port_free
from vault_raft.ops import netns as NN
from vault_raft.ops.cluster import LocalCluster, free_base_port, http_status, wait_until

IDS = ["n1", "n2", "n3"]
LOOPBACK = {"n1": "127.0.0.11", "n2": "127.0.0.12", "n3": "127.0.0.13"}
MODES = ("auto", "netns", "loopback")


class DemoHostsError(VaultRaftError):
    """The requested kind of hosts is not available here (the message says why)."""


def _say(msg: str) -> None:
    print(msg, flush=True)


def choose(mode: str = "auto") -> tuple[str, str]:
    """``(kind, why)``: ``kind`` is ``"netns"`` or ``"loopback"``."""
    if mode not in MODES:
        raise ValueError(f"hosts: one of {', '.join(MODES)}")
    if mode == "loopback":
        return "loopback", "forced by --hosts loopback"
    reason = NN.unavailable()
    if reason is None:
        return "netns", "root and `ip netns` work here"
    if mode == "netns":
        raise DemoHostsError(f"--hosts netns: {reason}")
    return "loopback", reason


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the clean-up runs (it is bounded: the
    nodes' stop and the namespaces' removal time out), so a second Ctrl-C
    does not leave nodes or namespaces behind."""
    try:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the clean-up below runs for it too."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _loopback_base() -> int:
    for host in LOOPBACK.values():
        if not port_free(host, 0):
            raise DemoHostsError(f"cannot bind {host}: this system routes only 127.0.0.1 "
                                 "to loopback (try --hosts netns as root)")
    return free_base_port(len(IDS), host=LOOPBACK["n1"])


def run_hosts_demo(directory: str | None = None, mode: str = "auto") -> int:
    kind, why = choose(mode)
    tmp = directory is None
    directory = directory or tempfile.mkdtemp(prefix="vault-raft-demo-hosts-")
    fleet_dir = os.path.join(directory, "fleet")
    net: NN.NetnsNet | None = None
    cluster: LocalCluster | None = None
    with _terminate_as_interrupt():
        try:
            if kind == "netns":
                _say(f"== hosts: network namespaces ({why}); each node is a host with its "
                     "own address on a private bridge")
                net = NN.NetnsNet(IDS)
                net.up()
                hosts = {nid: net.addr(nid) for nid in IDS}
                NN.init_netns_fleet(fleet_dir, net, max_attempts=10)
            else:
                _say(f"== hosts: loopback addresses ({why}); each node listens on its own "
                     "127.0.0.x, and cutting a host off means killing its node")
                hosts = dict(LOOPBACK)
                init_fleet(fleet_dir, len(IDS), base_port=_loopback_base(),
                           node_hosts=hosts, max_attempts=10)
            _say(f"== 1. fleet init in {fleet_dir}: "
                 + ", ".join(f"{nid} on {h}" for nid, h in hosts.items()))
            cluster = LocalCluster(fleet_dir, wrap=net.wrap if net is not None else None)
            _steps(cluster, net, os.path.join(fleet_dir, "fleet.json"))
            _say("\ndemo finished: a host cut off did not stop the fleet; "
                 "back, it caught up.")
            return 0
        finally:
            with _uninterrupted():
                if cluster is not None:
                    cluster.stop(timeout=10)
                if net is not None:
                    net.close()
                    _say(f"   namespaces and links removed ({NN.NS_PREFIX}*-{net.tag}-n*)")
                if tmp:
                    shutil.rmtree(directory, ignore_errors=True)


def _track(cluster: LocalCluster, net: NN.NetnsNet | None) -> None:
    for nid in cluster.ids:
        pid = cluster.pid(nid)
        if net is not None and pid is not None:
            net.track(pid)


def _steps(cluster: LocalCluster, net: NN.NetnsNet | None, fleet: str) -> None:
    _say("== 2. cluster up: each node is its own process on its own host")
    cluster.start()
    _track(cluster, net)
    t0 = time.monotonic()
    leader = cluster.wait_leader(60)
    _say(f"   leader {leader} elected after {time.monotonic() - t0:.1f}s")
    cluster.wait_healthy(timeout=60)
    _say(cluster.table())

    cli = C.Client(fleet)
    _say("\n== 3. enroll alice (max 5 attempts); two wrong guesses, then her code")
    cli.enroll("alice", "alice's code", b"alice's backup key", max_attempts=5)
    for guess in ("123456", "password"):
        try:
            cli.recover("alice", guess)
        except C.WrongCode as exc:
            _say(f"   guess {guess!r:12} -> wrong code, {exc.attempts_left} attempts left")
    rec = cli.recover("alice", "alice's code")
    _say(f"   recovered {rec.secret!r}; failed attempts since last success: "
         f"{rec.failed_attempts}")

    victim, others = leader, [n for n in cluster.ids if n != leader]
    _say(f"\n== 4. cut off {victim}'s host (the leader)")
    if net is not None:
        net.cut(victim)
        _say(f"   {victim}: link down (its process runs on, unreachable)")
    else:
        cluster.kill(victim)
        _say(f"   {victim}: node killed (loopback hosts have no link to take down)")
    answer = http_status(cluster.api[victim], timeout=1.0, channel=cluster.channel)
    _say(f"   {victim} answers {'nothing' if answer is None else answer}")
    t0 = time.monotonic()
    new_leader = cluster.wait_leader(60, others)
    _say(f"   {new_leader} leads {' and '.join(others)} after {time.monotonic() - t0:.1f}s")
    two = C.Client(fleet, nodes=[cluster.api[n] for n in others])
    try:
        two.recover("alice", "a guess while it is away")
    except C.WrongCode as exc:
        _say(f"   a wrong guess at alice is counted by the two: {exc.attempts_left} "
             "attempts left")
    two.enroll("bob", "bob's code", b"bob's backup key")
    rec = two.recover("bob", "bob's code")
    _say(f"   the other two enroll bob and serve his recovery: {rec.secret!r}")
    mark = (cluster.status(new_leader) or {}).get("commit_index", 0)

    _say(f"\n== 5. {victim}'s host comes back")
    if net is not None:
        net.restore(victim)
        _say(f"   {victim}: link up")
    else:
        cluster.start([victim])
        _track(cluster, net)
        _say(f"   {victim}: node restarted from its own disk")
    t0 = time.monotonic()
    wait_until(lambda: (cluster.status(victim) or {}).get("last_applied", -1) >= mark,
               60, 0.2, f"{victim} to apply index {mark}")
    cluster.wait_healthy(timeout=60)
    _say(f"   {victim} caught up to index {mark} after {time.monotonic() - t0:.1f}s")
    only = C.Client(fleet, nodes=[cluster.api[victim]])
    rec = only.recover("bob", "bob's code")
    _say(f"   {victim} alone serves bob, enrolled while it was away: {rec.secret!r}")
    rec = only.recover("alice", "alice's code")
    _say(f"   and alice: the guess made while it was away counted "
         f"(failed attempts: {rec.failed_attempts})")
    _say(cluster.table())
