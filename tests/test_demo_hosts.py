"""``vault-raft demo --hosts`` (issue 19): every node on its own host -- a
network namespace where the machine allows, else its own loopback address --
one host cut off while the other two serve, and back, caught up.  Nothing of
the run remains afterwards: no namespace with the demo's prefix, no node."""
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import vault_cli

from vault_raft.ops import demo_hosts as DH
from vault_raft.ops.netns import NS_PREFIX, unavailable

pytestmark = pytest.mark.timeout(300)

COMMON = [
    "== 1. fleet init in ",
    "== 2. cluster up",
    "-> wrong code, 4 attempts left",
    "-> wrong code, 3 attempts left",
    "failed attempts since last success: 2",
    "answers nothing",
    "a wrong guess at alice is counted by the two: 4 attempts left",
    "the other two enroll bob and serve his recovery: b\"bob's backup key\"",
    "caught up to index ",
    "alone serves bob, enrolled while it was away",
    "the guess made while it was away counted (failed attempts: 1)",
    "demo finished: a host cut off did not stop the fleet; back, it caught up.",
]


def _namespaces() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in r.stdout.splitlines() if line.split()}


def _check(out: str) -> None:
    for line in COMMON:
        assert line in out, (line, out)
    assert out.index("cut off") < out.index("answers nothing") < out.index("comes back")


@pytest.mark.cluster
@pytest.mark.skipif(unavailable() is not None, reason=f"network namespaces: {unavailable()}")
def test_demo_hosts_in_network_namespaces():
    before = {n for n in _namespaces() if n.startswith(NS_PREFIX)}
    r = vault_cli("demo", "--hosts", timeout=240)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = r.stdout
    assert "== hosts: network namespaces (root and `ip netns` work here)" in out
    _check(out)
    assert re.search(r"n1 on 10\.213\.\d+\.1, n2 on 10\.213\.\d+\.2, n3 on 10\.213\.\d+\.3", out)
    assert ": link down (its process runs on, unreachable)" in out and ": link up" in out
    tag = re.search(r"namespaces and links removed \(vault-raft-\*-([0-9a-f]{6})-n\*\)", out)
    assert tag, out
    after = {n for n in _namespaces() if n.startswith(NS_PREFIX)}
    assert not {n for n in after if f"-{tag.group(1)}-" in n}
    assert after <= before  # nothing of this run (or swept stale runs) remains
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f"vr{tag.group(1)}" not in links


@pytest.mark.cluster
def test_demo_hosts_loopback_fallback_forced():
    before = _namespaces() if unavailable() is None else set()
    r = vault_cli("demo", "--hosts", "loopback", timeout=240)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = r.stdout
    assert "== hosts: loopback addresses (forced by --hosts loopback)" in out
    _check(out)
    assert "n1 on 127.0.0.11, n2 on 127.0.0.12, n3 on 127.0.0.13" in out
    assert ": node killed (loopback hosts have no link to take down)" in out
    assert ": node restarted from its own disk" in out
    assert "namespaces and links removed" not in out
    if unavailable() is None:
        assert _namespaces() == before


def test_choose_says_which_and_why(monkeypatch):
    monkeypatch.setattr(DH.NN, "unavailable", lambda: "network namespaces need root")
    assert DH.choose("auto") == ("loopback", "network namespaces need root")
    assert DH.choose("loopback") == ("loopback", "forced by --hosts loopback")
    with pytest.raises(DH.DemoHostsError, match="--hosts netns: network namespaces need root"):
        DH.choose("netns")
    monkeypatch.setattr(DH.NN, "unavailable", lambda: None)
    assert DH.choose("auto")[0] == "netns"
    assert DH.choose("loopback")[0] == "loopback"


def test_keep_does_not_combine_with_hosts(capsys):
    from vault_raft.cli.main import main
    assert main(["demo", "--hosts", "--keep"]) == 2
    assert "--keep does not combine with --hosts" in capsys.readouterr().err


@pytest.mark.cluster
def test_ctrl_c_removes_nodes_and_namespaces():
    """SIGINT once the cluster is up: exit 130, every node (by PID) and every
    namespace of the run gone."""
    proc = subprocess.Popen([sys.executable, "-m", "vault_raft", "demo", "--hosts"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline and len(pids) < 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            m = re.match(r"^n\d\s+(\d+)\s", line)
            if m:
                pids.append(int(m.group(1)))
        assert len(pids) == 3
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "Z", f"node {pid} still runs"
        except FileNotFoundError:
            pass
    if unavailable() is None:
        assert not {n for n in _namespaces() if n.startswith(f"{NS_PREFIX}{proc.pid}-")}
