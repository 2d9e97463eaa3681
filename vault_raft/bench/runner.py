"""The benchmark: the vault's commits next to etcd, raw pysyncobj and the disk's floor.

Everything runs in one invocation on this machine, so ratios compare like
with like.  See bench/README.md for the method and how to read the output.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from vault_raft.bench.ab import run_channel_ab, run_mark_ab, run_netns_ab
from vault_raft.bench.baselines import measure_floor, run_etcd, run_raw
from vault_raft.bench.harness import Config, progress
from vault_raft.bench.load import Result
from vault_raft.bench.scale import run_growth, run_sizes
from vault_raft.bench.vault import run_vault
from vault_raft.storage.files import atomic_write


def run(cfg: Config) -> dict:
    os.makedirs(cfg.out, exist_ok=True)
    res: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                 "config": {k: v for k, v in cfg.__dict__.items() if k not in ("results",)}}
    t0 = time.perf_counter()
    if "floor" in cfg.compare:
        progress(cfg, "floor: fsync latency and loopback round trip")
        work = os.path.join(cfg.out, "work")
        os.makedirs(work, exist_ok=True)
        res["floor"] = measure_floor(work, max(cfg.samples, 200))
    run_vault(cfg, res)
    if "pysyncobj" in cfg.compare:
        run_raw(cfg, res)
    if "etcd" in cfg.compare:
        run_etcd(cfg, res)
    if "channel" in cfg.compare:
        run_channel_ab(cfg, res)
    if "mark" in cfg.compare:
        run_mark_ab(cfg, res)
    if "netns" in cfg.compare:
        run_netns_ab(cfg, res)
    if cfg.sizes:
        run_sizes(cfg, res)
    if cfg.growth:
        run_growth(cfg, res)
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    shutil.rmtree(os.path.join(cfg.out, "work"), ignore_errors=True)
    return res


def to_json(obj):
    if isinstance(obj, Result):
        return obj.summary()
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def write_json(res: dict, path: str) -> None:
    atomic_write(path, json.dumps(to_json(res), indent=2).encode(), mode=0o666)


__all__ = ["Config", "run", "write_json", "to_json"]
