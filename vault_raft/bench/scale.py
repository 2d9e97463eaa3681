"""How the vault scales: cluster sizes, and the number of records (snapshot
size, restart time, memory, and guesses while the leader compacts)."""

from __future__ import annotations

import os
import shutil
import threading
import time

from vault_raft.bench.harness import ATTEMPTS_PER_BENCH_USER, Config, VaultBench, progress
from vault_raft.bench.load import Result, attempt, closed_loop, timed
from vault_raft.core import machine as M
from vault_raft.crypto import opaque
from vault_raft.fleet.config import FleetInfo
from vault_raft.storage.snapshot import snapshot_bytes

NO_OP = b"\x01"


def run_sizes(cfg: Config, res: dict) -> None:
    out = {}
    for n in cfg.sizes:
        vb = VaultBench(cfg, n, f"size{n}")
        try:
            progress(cfg, f"cluster size {n}: start, then guesses at concurrency 1")
            t_up = vb.start()
            # warm-up (1 s, at most ~1500 guesses) plus the samples, 95 guesses per user
            vb.prepare((cfg.samples + 1500) // (ATTEMPTS_PER_BENCH_USER - 5) + 2, 0)
            closed_loop("warmup", vb.guess_op, 2, 1.0)
            r = timed(cfg.samples, vb.guess_op(vb.entry_points()[0]), f"vault guess, {n} nodes")
            out[n] = {"guess": r, "startup_s": round(t_up, 3)}
        finally:
            vb.stop()
    res["sizes"] = out


def _synthetic_state(n: int, record: bytes) -> M.VaultState:
    st = M.VaultState()
    version = b"\x00" * 16
    sealed = b"\x01" + os.urandom(12) + os.urandom(48)
    for i in range(n):
        st.records[f"s{i}".encode()] = M.Record(status=M.ACTIVE, version=version,
                                                opaque_record=record, sealed_secret=sealed,
                                                max_attempts=ATTEMPTS_PER_BENCH_USER,
                                                created_at=1, updated_at=1,
                                                cred_id=os.urandom(M.CRED_ID_LEN))
    return st


def measure_compaction(vb: VaultBench, n: int, timeout: float = 120.0) -> dict:
    """Guesses at concurrency 1 while the leader snapshots its state and compacts
    its journal (forced through the signed admin path): the stall, if any, is
    what a snapshot costs the commit path.  The snapshot is written by a forked
    child (RaftSettings.fork_snapshots), so the Raft thread pauses only to fork."""
    leader = vb.cluster.leader()
    st = vb.cluster.status(leader) if leader else None
    if leader is None or not st or "log_start" not in st:
        return {"error": "no leader with an admin status"}
    lat = Result(f"vault guess during a snapshot, {n} records", 1, "closed", 0.0)
    stop = threading.Event()
    op = vb.guess_op(vb.entry_points()[0])

    def load():
        t_start = time.perf_counter()
        while not stop.is_set():
            t0 = time.perf_counter()
            if attempt(op):
                lat.ok += 1
                lat.hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
            else:
                lat.errors += 1
        lat.duration = time.perf_counter() - t_start
    th = threading.Thread(target=load, daemon=True)
    th.start()
    time.sleep(0.5)
    before = (vb.cluster.status(leader) or {}).get("log_start", 0)
    t0 = time.perf_counter()
    code, _ = vb.cluster.admin(leader, "compact")
    done = None
    while code == 200 and time.perf_counter() - t0 < timeout:
        start = (vb.cluster.status(leader, timeout=2.0) or {}).get("log_start")
        if isinstance(start, int) and start > before:  # the journal was compacted
            done = time.perf_counter() - t0
            break
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    th.join(30)
    return {"snapshot_and_compaction_s": None if done is None else round(done, 3),
            "guess": lat, "max_guess_ms": round(lat.hist.get_max_value() / 1000, 2)
            if lat.hist.get_total_count() else None}


def run_growth(cfg: Config, res: dict) -> None:
    out: dict[int, dict] = {}
    for n in cfg.growth:
        vb = VaultBench(cfg, cfg.nodes, f"growth{n}")
        try:
            progress(cfg, f"growth: {n} records: build the state and its snapshot")
            vb.start()
            c = vb.conn(0)
            record, _ = vb._register(c, b"tmpl", b"tmpl code")
            c.close()
            vb.stop()
            t0 = time.perf_counter()
            state = _synthetic_state(n, record)
            t_build = time.perf_counter() - t0
            t0 = time.perf_counter()
            blob = state.snapshot()
            t_snap = time.perf_counter() - t0
            del state
            data = snapshot_bytes(blob, [[NO_OP, 2, 0], [NO_OP, 1, 0]],
                                  sorted(FleetInfo.load(vb.fleet_path).nodes[i].id
                                         for i in range(cfg.nodes)))
            del blob
            for nid in vb.cluster.ids:
                ddir = os.path.join(vb.cluster.node_dir(nid), "data")
                shutil.rmtree(ddir, ignore_errors=True)
                os.makedirs(ddir)
                with open(os.path.join(ddir, "snapshot.bin"), "wb") as f:
                    f.write(data)
            size = len(data)
            del data
            progress(cfg, f"growth: {n} records: restart from snapshot "
                           f"({size / 1e6:.1f} MB) and measure")
            t_restart = vb.start()
            rss = vb.node_rss()
            vb.guess_users = [f"s{i}".encode() for i in range(min(n, 1000))]
            vb._ke1s = [opaque.ClientLogin.start(b"wrong", ksf=vb.fleet.ksf,
                                                 context=vb.fleet.context)[1] for _ in range(32)]
            guess = timed(cfg.samples, vb.guess_op(vb.entry_points()[0]),
                          f"vault guess, {n} records")
            progress(cfg, f"growth: {n} records: guesses while the leader takes a snapshot")
            compaction = measure_compaction(vb, n)
            out[n] = {"records": n, "snapshot_bytes": size, "compaction": compaction,
                      "snapshot_serialize_s": round(t_snap, 3), "build_s": round(t_build, 3),
                      "restart_to_healthy_s": round(t_restart, 3),
                      "rss_bytes_per_node": rss,
                      "guess": guess}
        finally:
            vb.stop()
            shutil.rmtree(vb.dir, ignore_errors=True)
    base = min(out) if out else None
    for n, v in out.items():
        if base is not None and n != base:
            d_rss = ((sum(v["rss_bytes_per_node"].values())
                      - sum(out[base]["rss_bytes_per_node"].values()))
                     / max(1, len(v["rss_bytes_per_node"])))
            v["memory_per_record_bytes"] = round(d_rss / (n - base), 1)
    res["growth"] = out
