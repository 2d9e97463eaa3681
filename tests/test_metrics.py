"""Each node's /metrics: parses as Prometheus text, and moves with the work done."""
import json
import os
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vault_raft import client as C
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.ops.cluster import wait_until
from vault_raft.raft.snapshots import read_snapshot_stats


def scrape(cl, nid) -> dict:
    """{(name, labels as a sorted tuple): value} of one node's metrics."""
    cfg = json.load(open(os.path.join(cl.node_dir(nid), "node.json")))
    url = f"http://{cfg['api_host']}:{cfg['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.cluster
def test_metrics_parse_and_count_what_happens(cluster_factory):
    cl = cluster_factory(3)
    p = os.path.join(cl.dir, "fleet.json")
    d = json.load(open(p))
    d["ksf"] = IDENTITY_KSF.to_dict()
    json.dump(d, open(p, "w"))
    leader = cl.leader()
    before = scrape(cl, leader)
    assert _get(before, "vault_raft_role", role="leader") == 1.0
    assert all(name.startswith("vault_") for name, _ in before)
    cli = C.Client(p, nodes=[cl.api[leader]])
    cli.enroll("alice", "right", b"key", max_attempts=5)
    for _ in range(3):
        with pytest.raises(C.WrongCode):
            cli.recover("alice", "wrong")
    with pytest.raises(C.WrongCode):
        cli.recover("nobody", "wrong")
    assert cli.recover("alice", "right").secret == b"key"
    bad = C.Client(p, nodes=[cl.api[leader]], token=lambda u: "not-a-token")
    with pytest.raises(C.NotAuthorized):
        bad.recover("alice", "x")
    after = scrape(cl, leader)

    def moved(name, **labels):
        return _get(after, name, **labels) - _get(before, name, **labels)
    assert moved("vault_guesses_total", outcome="counted") == 4
    assert moved("vault_guesses_total", outcome="unknown") == 1
    assert moved("vault_commits_total", op="enroll", outcome="ok") == 1
    assert moved("vault_commits_total", op="begin_attempt", outcome="ok") == 5
    assert moved("vault_commit_seconds_count", op="begin_attempt") == 5
    assert moved("vault_rejections_total", reason="token") == 1
    assert moved("vault_journal_fsync_seconds_count") >= 6
    assert _get(after, "vault_raft_commit_index") >= _get(before, "vault_raft_commit_index") + 7
    assert _get(after, "vault_raft_peers_connected") == 2
    assert _get(after, "vault_node_healthy") == 1.0
    assert _get(after, "vault_records", status="active") == 1

    # a compaction: the snapshot's write time appears (the write runs in a forked child)
    assert ("vault_snapshot_duration_seconds", ()) not in after  # no snapshot written yet
    status, out = cl.admin(leader, "compact", {})
    assert status == 200, out

    def with_duration():
        m = scrape(cl, leader)
        return m if ("vault_snapshot_duration_seconds", ()) in m else None
    snapped = wait_until(with_duration, 30, 0.2, "the snapshot duration metric")
    assert 0 < _get(snapped, "vault_snapshot_duration_seconds") < 30
    assert _get(snapped, "vault_snapshot_bytes") > 0
    stats = read_snapshot_stats(os.path.join(cl.node_dir(leader), "data", "snapshot.bin"))
    assert stats is not None and stats["index"] >= _get(after, "vault_raft_applied_index")
    assert _get(snapped, "vault_snapshot_duration_seconds") == stats["duration_seconds"]


def test_the_alert_rules_check():
    import shutil
    import subprocess
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "prometheus")
    r = subprocess.run([promtool, "check", "rules", os.path.join(here, "alerts.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
