"""A short run of `vault-raft bench`: the outputs exist and are well formed (not how fast).

The etcd baseline runs only where etcd is installed (.ci/run installs the pinned
``etcd-server``): the test never installs anything, and leaves etcd out otherwise.
"""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from vault_raft.bench.etcd import ETCD_PACKAGE
from vault_raft.ops.netns import unavailable as netns_unavailable

HAVE_ETCD = shutil.which("etcd") is not None
BASELINES = "pysyncobj,floor,channel,mark"  # `vault-raft bench`'s default, but etcd and netns


@pytest.mark.cluster
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench"
    compare = ("etcd," if HAVE_ETCD else "") + BASELINES
    r = subprocess.run([sys.executable, "-m", "vault_raft", "bench", "--duration", "1",
                        "--concurrency", "1,4", "--sizes", "3", "--growth", "500",
                        "--samples", "20", "--target-rate", "50", "--compare", compare,
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[bench" in r.stderr  # progress is shown
    res = json.loads((out / "results.json").read_text())
    for key in ("vault", "pysyncobj", "floor", "sizes", "growth"):
        assert key in res, key
    c1 = res["vault"]["c1"]
    for name in ("guess", "release", "enroll", "full_recovery_server", "full_recovery_no_ksf",
                 "full_recovery_total"):
        s = c1[name]
        assert s["ok"] > 0 and s["errors"] == 0, (name, s)
        assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert set(res["vault"]["curve"]) == {"1", "4"}
    for phases in res["vault"]["curve"].values():
        assert phases["closed"]["throughput_per_s"] > 0
        assert phases["open"]["ok"] > 0 and "p99_ms" in phases["open"]
    assert res["vault"]["target"]["ok"] > 0
    assert res["growth"]["500"]["snapshot_bytes"] > 0
    assert res["growth"]["500"]["guess"]["errors"] == 0
    assert res["floor"]["fsync"]["p50_ms"] > 0
    if HAVE_ETCD:
        assert "unavailable" not in res["etcd"], res["etcd"]
        assert res["etcd"]["c1"]["put"]["ok"] > 0 and res["etcd"]["c1"]["cas_increment"]["ok"] > 0
    else:
        assert "etcd" not in res, "etcd was not asked for"
    for t in ("tls", "plain"):  # the client channel A/B: guesses with and without TLS
        for mode in ("keepalive", "new_connection"):
            s = res["channel"][t][mode]
            assert s["ok"] > 0 and s["errors"] == 0 and s["p50_ms"] <= s["p99_ms"], (t, mode, s)
    table = (out / "table.txt").read_text()
    assert "vault guess commit" in table and "p50/fsync" in table
    assert "TLS 1.3, pinned, kept-alive connection" in table and "TLS / plain" in table
    for pic in ("latency_cdf.png", "throughput_latency.png"):
        data = (out / pic).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not (out / "work").exists()  # the run cleans up its clusters' directories


@pytest.mark.cluster
@pytest.mark.skipif(netns_unavailable() is not None,
                    reason=f"network namespaces: {netns_unavailable()}")
def test_bench_netns_comparison(tmp_path):
    """Guesses on a fleet with a network namespace per node beside the loopback
    fleet: both sides measured, side by side in the table, namespaces removed."""
    out = tmp_path / "bench"
    p = subprocess.Popen([sys.executable, "-m", "vault_raft", "bench", "--duration", "1",
                          "--concurrency", "1", "--sizes", "none", "--growth", "none",
                          "--samples", "20", "--target-rate", "0", "--workload", "guess",
                          "--compare", "netns", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err[-3000:]
    res = json.loads((out / "results.json").read_text())
    for side in ("netns", "loopback"):
        v = res["netns"][side]
        assert v["c1"]["ok"] >= 40 and v["c1"]["errors"] == 0, (side, v)
        assert 0 < v["c1"]["p50_ms"] <= v["c1"]["p99_ms"], (side, v)
        assert v["throughput"] > 0, (side, v)
    table = (out / "table.txt").read_text()
    for line in ("own namespace per node (veth + bridge)", "loopback (127.0.0.1)",
                 "netns / loopback"):
        assert line in table, table
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"vault-raft-{p.pid}-" not in names  # the run removed its namespaces


def test_bench_netns_comparison_is_skipped_with_a_note(monkeypatch, tmp_path):
    """Where namespaces cannot be made, the comparison says why and the run goes on."""
    from vault_raft.bench import ab, report
    from vault_raft.bench.harness import Config

    monkeypatch.setattr(ab.netns, "unavailable", lambda: "network namespaces need root")
    res: dict = {}
    ab.run_netns_ab(Config(out=str(tmp_path), quiet=True), res)
    assert res == {"netns": {"skipped": "network namespaces need root"}}
    assert "namespace fleet A/B: not measured (network namespaces need root)" in \
        report.table(res)


def test_ci_installs_the_etcd_the_bench_pins():
    ci = (pathlib.Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert f"apt-get install -y -qq {ETCD_PACKAGE}" in ci


@pytest.mark.cluster  # runs `vault-raft bench` (refused before any node starts)
def test_bench_rejects_bad_arguments(tmp_path):
    for args in (["--workload", "nope"], ["--compare", "redis"], ["--concurrency", "x"],
                 ["--nodes", "2"]):
        r = subprocess.run([sys.executable, "-m", "vault_raft", "bench", "--out",
                            str(tmp_path), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_load_loops_warm_each_worker_before_the_clock_starts():
    """Each worker's first request (connection set-up) is made before the
    clock starts and is not counted; an open loop then sends exactly its
    schedule."""
    import threading
    import time

    from vault_raft.bench import load

    calls, lock = [], threading.Lock()

    def make_op(i):
        def op():
            with lock:
                calls.append((i, time.perf_counter()))
            if not any(j == i for j, _ in calls[:-1]):
                time.sleep(0.2)  # a slow first request: connecting
            return True
        return op

    timeline: list = []
    res = load.open_loop("t", make_op, 4, 40, 0.5, timeline=timeline)
    assert res.ok == 20 and res.errors == 0  # 40/s for 0.5 s; the 4 warm-ups not counted
    assert len(calls) == 24
    assert max(lat for _, lat in timeline) < 0.15  # no request paid for a connect
    calls.clear()
    res = load.closed_loop("t", make_op, 2, 0.3)
    assert res.ok == len(calls) - 2 and res.hist.get_max_value() < 150_000


def test_slowest_second_is_the_one_with_the_highest_p99():
    from vault_raft.bench.load import slowest_second
    timeline = [(s + i / 100, 0.005) for s in range(4) for i in range(100)]
    timeline += [(2.5, 0.080), (2.6, 0.090)]  # second 2 has the tail
    assert slowest_second(timeline) == {"second": 2, "p99_ms": 80.0, "n": 102}
    assert slowest_second([(0.1, 0.01)]) is None  # too few points to call
