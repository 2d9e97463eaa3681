"""Storage faults never roll a counter back (real node processes).

Faults are injected while nodes are stopped (a log cut short inside a
committed record, a deleted segment, snapshot or term/vote file, a commit
index past the log's end), or while they run (a full disk, through a small
tmpfs).  In every case the number of wrong-code answers stays within the
limit, and a damaged node recovers from its peers before it votes or serves.
The first scenario also runs against a planted node that ignores its
durability mark (``tests/bugs/buggy_node.py --bug trust-damaged-tail``), and
there the attacker gets more guesses than the limit: the test can fail.
"""
import json
import os
import struct
import subprocess
import sys

import pytest

from vault_raft import client as C
from vault_raft.chaos.disk import cut_at, records
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.ops.cluster import LocalCluster, wait_until
from vault_raft.storage import segments as SG
from vault_raft.storage.snapshot import read_snapshot

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.cluster

LIMIT = 5
BUGGY = [sys.executable, os.path.join(HERE, "bugs", "buggy_node.py"), "--bug",
         "trust-damaged-tail"]


def _client(cl, timeout=4.0):
    p = os.path.join(cl.dir, "fleet.json")
    d = json.load(open(p))
    if d["ksf"] != IDENTITY_KSF.to_dict():
        d["ksf"] = IDENTITY_KSF.to_dict()
        json.dump(d, open(p, "w"))
    return C.Client(p, timeout=timeout, request_timeout=2.0)


class Guesser:
    """Wrong guesses at the victim; counts the answers that tested a code."""

    def __init__(self, cli):
        self.cli, self.wrong, self.unavailable, self.destroyed = cli, 0, 0, False

    def guess(self) -> str:
        try:
            self.cli.recover(b"victim", b"wrong code")
        except C.WrongCode:
            self.wrong += 1
            return "wrong"
        except C.NoRecord:
            self.destroyed = True
            return "destroyed"
        except C.Unavailable:
            self.unavailable += 1
            return "unavailable"
        raise AssertionError("a wrong code recovered the secret")

    def until_destroyed(self, tries=30):
        for _ in range(tries):
            if self.guess() == "destroyed":
                return
        raise AssertionError(f"not destroyed after {tries} tries ({self.wrong} wrong answers)")


def _journal(cl, nid):
    return os.path.join(cl.node_dir(nid), "data", "raft.journal")


def _synced(cl, nid) -> int:
    return cl.status(nid)["synced_index"]


def _wait_recovered(cl, nid, timeout=30):
    wait_until(lambda: (cl.status(nid) or {}).get("recovering") is None
               and (cl.status(nid) or {}).get("healthy"), timeout)


def _damaged_plus_lagging(cluster_factory, node_cmd=None) -> tuple[Guesser, LocalCluster, str]:
    cl = cluster_factory(3, node_cmd=node_cmd)
    cli = _client(cl)
    cli.enroll(b"victim", b"right code", b"the key", max_attempts=LIMIT)
    g = Guesser(cli)
    intact = cl.leader()
    damaged, lagging = [n for n in cl.ids if n != intact]
    wait_until(lambda: all(_synced(cl, n) >= cl.status(intact)["commit_index"]
                           for n in cl.ids), 10)
    before = cl.status(intact)["commit_index"]
    cl.stop([lagging])  # from here on it lags behind
    for _ in range(3):
        assert g.guess() == "wrong"
    wait_until(lambda: _synced(cl, damaged) >= before + 3, 10)
    cl.stop([intact, damaged])
    cut_at(cl.node_dir(damaged), before + 1)  # it loses the three counted attempts
    cl.start([damaged, lagging])  # the node that holds them is down
    for _ in range(4):
        g.guess()
    cl.start([intact])
    cl.wait_leader(30)
    g.until_destroyed()
    return g, cl, damaged


def test_a_damaged_node_and_a_lagging_one_do_not_roll_the_counter_back(cluster_factory):
    g, cl, damaged = _damaged_plus_lagging(cluster_factory)
    assert g.wrong <= LIMIT, f"{g.wrong} wrong-code answers on a limit of {LIMIT}"
    assert g.unavailable >= 1  # the two alone could not serve: one lacked what it acked
    _wait_recovered(cl, damaged)
    log = open(os.path.join(cl.node_dir(damaged), "node.log")).read()
    assert "lost acknowledged data" in log and "recovered" in log


def test_the_same_faults_break_the_limit_on_a_node_that_trusts_a_damaged_tail(cluster_factory):
    g, _, _ = _damaged_plus_lagging(cluster_factory, node_cmd=BUGGY)
    assert g.wrong > LIMIT, f"the planted node kept the limit ({g.wrong} wrong answers)"


def test_two_damaged_nodes_elect_the_intact_one(cluster_factory):
    cl = cluster_factory(3)
    cli = _client(cl)
    cli.enroll(b"victim", b"right code", b"the key", max_attempts=LIMIT)
    g = Guesser(cli)
    before = cl.status(cl.leader())["commit_index"]
    for _ in range(3):
        assert g.guess() == "wrong"
    wait_until(lambda: all(_synced(cl, n) >= before + 3 for n in cl.ids), 10)
    cl.stop()
    cut_at(cl.node_dir("n1"), before + 1)
    cut_at(cl.node_dir("n2"), before + 1)
    cl.start()
    assert cl.wait_leader(30) == "n3"  # the damaged ones vote only for a log covering theirs
    g.until_destroyed()
    assert g.wrong <= LIMIT, f"{g.wrong} wrong-code answers on a limit of {LIMIT}"
    for n in ("n1", "n2"):
        _wait_recovered(cl, n)


def test_deleted_last_segment_snapshot_and_term_file_are_recovered(cluster_factory):
    raft = {"segment_bytes": 2048, "compaction_min_entries": 30, "compaction_min_time": 0.5}
    cl = cluster_factory(3, raft=raft)
    cli = _client(cl)
    cli.enroll(b"victim", b"right code", b"the key", max_attempts=50)
    g = Guesser(cli)
    for _ in range(40):  # enough for segments to roll and snapshots to be taken
        assert g.guess() == "wrong"
    data = os.path.join(cl.node_dir("n1"), "data")
    wait_until(lambda: os.path.exists(os.path.join(data, "snapshot.bin")), 30)
    wait_until(lambda: cl.status("n1")["log_start"] > 1, 30)
    cl.stop(["n1"])
    os.unlink(os.path.join(data, "snapshot.bin"))  # the journal now starts after a gap
    os.unlink(os.path.join(data, "raft.journal.meta"))  # and the term/vote file is gone
    segs = SG.list_segments(os.path.join(data, "raft.journal"))
    os.unlink(SG.segment_path(os.path.join(data, "raft.journal"), segs[-1]))
    cl.start(["n1"])
    _wait_recovered(cl, "n1")
    log = open(os.path.join(cl.node_dir("n1"), "node.log")).read()
    assert "restored from the durability mark" in log
    # a gap after the lost snapshot, or (when the deleted segment was the only one) an empty log
    assert "are missing (the snapshot was lost" in log or "log ends at entry 0" in log
    # another node loses its first segment while the snapshot still needs it: a gap
    cl.stop(["n2"])
    j2 = _journal(cl, "n2")
    first = SG.segment_path(j2, SG.list_segments(j2)[0])
    covered = read_snapshot(os.path.join(cl.node_dir("n2"), "data", "snapshot.bin"))
    needed = records(first)[-1][2] > covered["entries"][0][1]  # entries past the snapshot?
    os.unlink(first)
    cl.start(["n2"])
    _wait_recovered(cl, "n2")
    # it recovers what the snapshot did not cover (seen as a gap, or as a log that ends
    # early when the deleted segment held all of it), or, nothing lost, just starts
    lost = "lost acknowledged data" in open(os.path.join(cl.node_dir("n2"), "node.log")).read()
    assert lost == needed
    # n1 holds the same state: with n1 and one other node only, the count goes on
    leader = cl.leader()
    cl.stop([next(n for n in cl.ids if n not in ("n1", leader))])
    wait_until(lambda: g.guess() == "wrong", 15)
    assert cli.recover(b"victim", b"right code").failed_attempts == g.wrong


def test_a_commit_index_past_the_log_is_clamped(cluster_factory):
    cl = cluster_factory(3)
    cli = _client(cl)
    cli.enroll(b"victim", b"right code", b"the key", max_attempts=LIMIT)
    cl.stop()
    for n in cl.ids:
        value = struct.pack("<Q", 10**6)
        with open(_journal(cl, n) + ".commit", "wb") as f:
            f.write(value + struct.pack("<I", __import__("zlib").crc32(value)))
    cl.start()
    cl.wait_leader(30)
    g = Guesser(cli)
    g.until_destroyed()
    assert g.wrong == LIMIT
    log = open(os.path.join(cl.node_dir("n1"), "node.log")).read()
    assert "past the log's end" in log


# ------------------------------------------------------------------ full disks

@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs, unmounted afterwards (needs root; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(directory):
    filler = os.path.join(directory, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("which", ["leader", "follower"])
def test_a_full_disk_stops_the_node_and_the_fleet_keeps_serving(small_disk, cluster_factory,
                                                                which):
    # (small_disk first: it is unmounted after the nodes are stopped)
    raft = {"segment_bytes": 2048}
    cl = cluster_factory(3, raft=raft, start=False)
    nid = "n1"  # its data directory lives on the small disk
    data = os.path.join(cl.node_dir(nid), "data")
    os.makedirs(small_disk + "/data", exist_ok=True)
    os.symlink(small_disk + "/data", data)
    cl.start()
    cl.wait_leader(30)
    cl.wait_healthy(timeout=30)
    if which == "leader" and cl.leader() != nid:
        cl.transfer(nid)
    if which == "follower" and cl.leader() == nid:
        cl.transfer(None)
    assert (cl.leader() == nid) == (which == "leader")
    cli = _client(cl)
    cli.enroll(b"victim", b"right code", b"the key", max_attempts=100)
    g = Guesser(cli)
    filler = _fill(small_disk)
    answers = [g.guess() for _ in range(60)]  # segments roll: the full disk is hit
    log_path = os.path.join(cl.node_dir(nid), "node.log")
    wait_until(lambda: "storage failure" in open(log_path).read(), 30)
    # the others serve (a new leader within a few election timeouts)
    wait_until(lambda: g.guess() == "wrong", 15)
    assert "wrong" in answers[-10:] or g.wrong > 0
    text = open(log_path).read()
    assert text.count("storage failure (") == 1  # said once, not in a loop
    assert "waiting" in text
    down = cl.status(nid) or {}  # while it waits, its status says why
    assert down.get("healthy") is False and "No space left" in down.get("reason", ""), down
    os.unlink(filler)  # space returns: the node resumes
    wait_until(lambda: (cl.status(nid) or {}).get("healthy"), 60)
    g.until_destroyed(tries=200)
    assert g.wrong <= 100
