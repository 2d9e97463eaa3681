"""A fleet across hosts (issue 19, acceptance 1): three nodes, each in its own
network namespace with its own address, on a bridge the test makes.

Enroll, wrong guesses and recovery; one host cut off (its link down): the
other two keep serving and the cut-off node answers nothing; the link back:
the node catches up.  Namespaces and links are gone afterwards, also when the
test body fails.  Skipped where network namespaces are unavailable (not root,
no iproute2)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from vault_raft import client as C
from vault_raft.chaos.campaign import CampaignConfig, run_campaign
from vault_raft.ops.cluster import LocalCluster, http_status, wait_until
from vault_raft.ops.netns import NetnsNet, _ns_pids, init_netns_fleet, sweep_stale, unavailable

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240),
              pytest.mark.skipif(unavailable() is not None,
                                 reason=f"network namespaces: {unavailable()}")]

IDS = ["n1", "n2", "n3"]


def _connects(url: str, timeout: float = 1.0) -> bool:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout).close()
        return True
    except OSError:
        return False


def test_three_hosts_cut_one_off_and_bring_it_back(tmp_path):
    d = str(tmp_path / "fleet")
    with NetnsNet(IDS) as net:
        fleet = init_netns_fleet(d, net)
        cl = LocalCluster(d, wrap=net.wrap)
        try:
            cl.start()
            for nid in IDS:
                pid = cl.pid(nid)
                assert pid is not None
                net.track(pid)
            assert {nid: cl.api[nid].split("//")[1].rsplit(":", 1)[0] for nid in IDS} == \
                {nid: net.addr(nid) for nid in IDS}
            leader = cl.wait_leader(60)
            cl.wait_healthy(timeout=60)

            cli = C.Client(fleet)
            cli.enroll("alice", "alice's code", b"alice secret", max_attempts=5)
            with pytest.raises(C.WrongCode) as wrong:
                cli.recover("alice", "a guess")
            assert wrong.value.attempts_left == 4
            rec = cli.recover("alice", "alice's code")
            assert rec.secret == b"alice secret" and rec.failed_attempts == 1

            # cut the leader's host off: the other two elect and keep serving
            victim = leader
            others = [n for n in IDS if n != victim]
            net.cut(victim)
            assert http_status(cl.api[victim], timeout=1.0, channel=cl.channel) is None
            assert not _connects(cl.api[victim])
            new_leader = cl.wait_leader(60, ids=others)
            assert new_leader != victim
            two = C.Client(fleet, nodes=[cl.api[n] for n in others])
            two.enroll("bob", "bob's code", b"bob secret", max_attempts=3)
            with pytest.raises(C.WrongCode):
                two.recover("alice", "another guess")
            assert two.recover("bob", "bob's code").secret == b"bob secret"
            assert not _connects(cl.api[victim])  # still nothing from the cut-off host
            mark = (cl.status(new_leader) or {})["commit_index"]

            # bring it back: it catches up and serves what was written without it
            net.restore(victim)
            wait_until(lambda: (cl.status(victim) or {}).get("last_applied", -1) >= mark,
                       60, 0.2, f"{victim} to apply index {mark}")
            cl.wait_healthy(timeout=60)
            only = C.Client(fleet, nodes=[cl.api[victim]])
            rec = only.recover("alice", "alice's code")
            assert rec.failed_attempts == 1  # the guess made while it was cut off counted
            assert only.recover("bob", "bob's code").secret == b"bob secret"
        finally:
            cl.stop(timeout=10)
        pids = [p for p in net._pids if p]
    assert net.leftovers() == []
    assert all(not os.path.exists(f"/proc/{p}") or _zombie(p) for p in pids)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_namespaces_are_removed_when_the_test_body_fails():
    net = NetnsNet(["n1", "n2"])
    proc = None
    with pytest.raises(RuntimeError, match="the test failed"):
        with net:
            proc = subprocess.Popen(net.wrap("n1") + [sys.executable, "-c",
                                                      "import time; time.sleep(300)"])
            wait_until(lambda: proc.pid in net.pids("n1"), 10, 0.05, "the process in n1")
            raise RuntimeError("the test failed")
    assert net.leftovers() == []
    assert proc is not None and proc.wait(5) == -9  # killed by PID when the network went


def test_parallel_networks_do_not_collide():
    with NetnsNet(["n1"]) as a, NetnsNet(["n1"]) as b:
        assert a.tag != b.tag and a.subnet != b.subnet
        assert a.ns("n1") != b.ns("n1")
        start = time.monotonic()
        probe = subprocess.run(a.wrap("n1") + [sys.executable, "-c",
                               "import socket,sys; s=socket.socket(); s.settimeout(1)\n"
                               f"sys.exit(s.connect_ex(('{b.addr('n1')}', 9)) == 0)"],
                               timeout=30)
        assert probe.returncode == 0 and time.monotonic() - start < 30  # no route across
    assert a.leftovers() == [] and b.leftovers() == []


def test_chaos_checkers_run_against_a_namespace_fleet(tmp_path):
    """The cut nemesis (a host's link down) and kill on a fleet of three hosts:
    the guess-limit and no-lost-ack checkers pass, and the namespaces go."""
    seed = 2  # schedule(2, 14, ("cut", "kill", "pause")): the leader's host cut for ~6 s
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    res = run_campaign(CampaignConfig(out=str(tmp_path), nodes=3, duration=14,
                                      nemesis=("cut", "kill", "pause"), seed=seed, owners=2,
                                      attackers=2, victims=6, victim_limit=10, quiet=True,
                                      netns=True))
    assert res.ok, [(v.name, v.status, v.problems[:5]) for v in res.verdicts]
    names = {v.name for v in res.verdicts}
    assert {"guess_limit", "no_lost_writes", "linearizable"} <= names
    assert res.injected.get("cut", 0) >= 1
    assert res.ops["ok"] > 50
    verdict = json.load(open(res.files["verdict"]))
    assert verdict["netns"] is True and verdict["faults"].get("cut", 0) >= 1
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert after == before


def test_chaos_cli_refuses_nemeses_that_do_not_fit_the_fleet(tmp_path):
    from conftest import vault_cli
    r = vault_cli("chaos", "--nemesis", "cut", "--duration", "5", "--out", str(tmp_path))
    assert r.returncode == 2 and "needs --netns" in r.stderr
    r = vault_cli("chaos", "--netns", "--nemesis", "partition,cut", "--duration", "5",
                  "--out", str(tmp_path))
    assert r.returncode == 2 and "partition" in r.stderr and "--netns" in r.stderr


def test_a_run_killed_outright_is_swept_by_the_next():
    """A namespace whose owning process is gone (SIGKILL: no exit handler ran)
    is removed, with what runs in it, when the next network comes up."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"vault-raft-{dead.pid}-abcdef-n1"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, sys.executable, "-c",
                                    "import time; time.sleep(300)"])
        wait_until(lambda: sleeper.pid in _ns_pids(stale), 10, 0.05, "the stale sleeper")
        assert stale in sweep_stale()
        assert sleeper.wait(5) == -9
        assert stale not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                           text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
