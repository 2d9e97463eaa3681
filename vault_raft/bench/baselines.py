"""What the vault is compared with: the disk's and the network's floor, raw
pysyncobj on the same replica stack, and etcd."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading

from vault_raft.api.channel import for_fleet
from vault_raft.api.http import Connection
from vault_raft.bench import etcd as E
from vault_raft.bench.harness import (
    Config,
    cluster_entry_points,
    free_base,
    progress,
    roles_to_entry_points,
)
from vault_raft.bench.load import closed_loop, open_loop, timed
from vault_raft.fleet.config import FleetInfo
from vault_raft.fleet.create import init_fleet
from vault_raft.ops.cluster import LocalCluster, wait_until


def measure_floor(directory: str, n: int) -> dict:
    """The disk's fdatasync latency for a 300-byte record -- written into
    reserved space, as etcd's WAL and our journal do, and appended to a growing
    file -- and the loopback round trip."""
    path = os.path.join(directory, "fsync-probe")
    rec = os.urandom(300)
    out = {}
    for key, reserve, name in (("fsync", True, "floor: fdatasync, 300 B, reserved file"),
                               ("fsync_append", False, "floor: fdatasync, 300 B, appended")):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if reserve:
            os.posix_fallocate(fd, 0, (n + 1) * len(rec))
            os.fsync(fd)
        pos = [0]

        def fs(fd=fd, pos=pos):
            os.pwrite(fd, rec, pos[0])
            pos[0] += len(rec)
            os.fdatasync(fd)
            return True
        out[key] = timed(n, fs, name)
        os.close(fd)
        os.unlink(path)

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def echo():
        c, _ = srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            b = c.recv(64)
            if not b:
                break
            c.sendall(b)
        c.close()
    t = threading.Thread(target=echo, daemon=True)
    t.start()
    cl = socket.create_connection(srv.getsockname())
    cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def rtt():
        cl.sendall(b"x")
        return cl.recv(64) == b"x"
    loop = timed(n, rtt, "floor: loopback TCP round trip")
    cl.close()
    srv.close()
    out["loopback"] = loop
    return out


def run_raw(cfg: Config, res: dict) -> None:
    d = os.path.join(cfg.out, "work", "raw")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    fleet = init_fleet(d, cfg.nodes, base_port=free_base(cfg.nodes))
    cl = LocalCluster(d, node_cmd=[sys.executable, "-m", "vault_raft.bench.rawnode"])
    info = FleetInfo.load(fleet)
    channel = for_fleet(info)
    try:
        progress(cfg, "raw pysyncobj: starting a counter cluster on the same replica stack")
        cl.start()
        wait_until(lambda: any((cl.status(n) or {}).get("role") == "leader"
                               and (cl.status(n) or {}).get("healthy") for n in cl.ids),
                   60, what="raw cluster leader")
        wait_until(lambda: all((cl.status(n) or {}).get("healthy") for n in cl.ids), 60,
                   what="raw cluster healthy")

        def inc_op(i: int):
            c = Connection(info.nodes[i % len(info.nodes)].api, channel=channel)
            key = f"k{i}".encode()
            return lambda: c.post("/inc", {"key": key})[0] == 200
        closed_loop("warmup", inc_op, 4, min(2.0, cfg.duration))
        lead, follower = cluster_entry_points(cl)
        out: dict = {"c1": {"increment": timed(cfg.samples, inc_op(lead),
                                               "raw pysyncobj increment")},
               "via_follower": {"increment": timed(cfg.samples, inc_op(follower),
                                                   "raw pysyncobj increment")},
               "curve": {}}
        for conc in cfg.concurrency:
            progress(cfg, f"raw pysyncobj: concurrency {conc}")
            c1 = closed_loop("raw pysyncobj increment", inc_op, conc, cfg.duration / 2)
            rate = max(1.0, c1.throughput * cfg.open_fraction)
            out["curve"][conc] = {"closed": c1, "open": open_loop(
                "raw pysyncobj increment", inc_op, conc, rate, cfg.duration / 2)}
        res["pysyncobj"] = out
    finally:
        cl.stop()


def run_etcd(cfg: Config, res: dict) -> None:
    try:
        binary = E.ensure_etcd(lambda m: progress(cfg, m))
    except E.EtcdUnavailable as exc:
        progress(cfg, f"etcd: skipped ({exc})")
        res["etcd"] = {"unavailable": str(exc)}
        return
    d = os.path.join(cfg.out, "work", "etcd")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    ec = E.EtcdCluster(d, free_base(3) + 200)
    try:
        progress(cfg, "etcd: starting a 3-member cluster (default durable settings)")
        ec.start(binary)

        def ops(i: int) -> E.EtcdOps:
            return E.EtcdOps(ec.endpoints[i % 3], f"bench/{i}".encode())
        closed_loop("warmup", lambda i: ops(i).put, 4, min(2.0, cfg.duration))
        lead, follower = roles_to_entry_points(ec.roles())
        out: dict = {
            "c1": {"put": timed(cfg.samples, ops(lead).put, "etcd put"),
                   "cas_increment": timed(cfg.samples, ops(lead).cas_increment,
                                          "etcd CAS increment"),
                   "cas_cached": timed(cfg.samples, ops(lead).cas_cached,
                                       "etcd CAS, one txn (value cached)")},
            "via_follower": {"put": timed(cfg.samples, ops(follower).put, "etcd put")},
            "curve": {}, "version": _etcd_version(binary)}
        for conc in cfg.concurrency:
            progress(cfg, f"etcd: CAS increments at concurrency {conc}")
            c1 = closed_loop("etcd CAS increment", lambda i: ops(i).cas_increment, conc,
                             cfg.duration / 2)
            rate = max(1.0, c1.throughput * cfg.open_fraction)
            out["curve"][conc] = {"closed": c1, "open": open_loop(
                "etcd CAS increment", lambda i: ops(i).cas_increment, conc, rate,
                cfg.duration / 2)}
        res["etcd"] = out
    except E.EtcdUnavailable as exc:
        res["etcd"] = {"unavailable": str(exc)}
    finally:
        ec.stop()


def _etcd_version(binary: str) -> str:
    import subprocess
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.split("\n")[0]
    except OSError:
        return "unknown"
