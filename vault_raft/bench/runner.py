"""The benchmark: the vault's commits next to etcd, raw pysyncobj and the disk's floor.

Everything runs in one invocation on this machine, so ratios compare like
with like.  See bench/README.md for the method and how to read the output.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from vault_raft.api import flows
from vault_raft.api.channel import for_fleet
from vault_raft.api.http import Connection
from vault_raft.bench import etcd as E
from vault_raft.bench.load import (
    Result,
    attempt,
    closed_loop,
    open_loop,
    slowest_second,
    timed,
    timed_interleaved,
)
from vault_raft.core import machine as M
from vault_raft.crypto import opaque
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.fleet.config import FleetInfo, NodeConfig
from vault_raft.fleet.create import init_fleet
from vault_raft.fleet.tenant_gate import Gate
from vault_raft.fleet.tenants import local_token_source
from vault_raft.ops.cluster import LocalCluster, free_base_port, wait_until
from vault_raft.raft.snapshots import snapshot_bytes
from vault_raft.storage.files import atomic_write

ATTEMPTS_PER_BENCH_USER = 100
NO_OP = b"\x01"


@dataclass
class Config:
    out: str
    nodes: int = 3
    duration: float = 5.0
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    compare: tuple[str, ...] = ("etcd", "pysyncobj", "floor")
    sizes: tuple[int, ...] = (3, 5, 7)
    growth: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    samples: int = 300  # sequential operations for concurrency-1 percentiles
    workloads: tuple[str, ...] = ("guess", "release", "enroll", "full_recovery")
    open_fraction: float = 0.8
    target_rate: float = 1000.0  # the target: >= 1000 guesses/s at concurrency 64
    quiet: bool = False
    results: dict = field(default_factory=dict)


def _progress(cfg: Config, msg: str) -> None:
    if not cfg.quiet:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_base(n: int) -> int:
    # the vault's (or raw cluster's) ports, plus etcd's clients at +200 and peers at +250
    return free_base_port(n, start=24000, step=300, extra=(200, 201, 202, 250, 251, 252))


def roles_to_entry_points(roles: list) -> tuple[int, int]:
    """Concurrency-1 figures are taken through the leader (and again through a
    follower, which forwards): where a client lands changes a commit's path,
    so each system is measured both ways, never by the luck of node 0."""
    if "leader" not in roles:
        raise RuntimeError(f"no leader among {roles}")
    lead = roles.index("leader")
    return lead, next(i for i in range(len(roles)) if i != lead)


def cluster_entry_points(cluster: LocalCluster) -> tuple[int, int]:
    """(index of the leader, index of a follower) in a local cluster's node list."""
    return roles_to_entry_points([(cluster.status(n) or {}).get("role") for n in cluster.ids])


# ------------------------------------------------------------------- floor

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


# ------------------------------------------------------------------- vault

class _RememberedKSF:
    """A client KSF that remembers its results (bench only: it measures what a
    recovery costs without the client's Argon2id)."""

    def __init__(self, ksf):
        self._ksf, self._memo = ksf, {}

    def stretch(self, data: bytes) -> bytes:
        out = self._memo.get(data)
        if out is None:
            out = self._memo[data] = self._ksf.stretch(data)
        return out


class VaultBench:
    def __init__(self, cfg: Config, nodes: int, tag: str, api_tls: bool = True,
                 raft: dict | None = None):
        self.cfg = cfg
        self.dir = os.path.join(cfg.out, "work", tag)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.fleet_path = init_fleet(self.dir, nodes, base_port=free_base(nodes),
                                     api_tls=api_tls)
        if raft:  # A/B comparisons: Raft settings
            for i in range(1, nodes + 1):
                p = os.path.join(self.dir, f"n{i}", "node.json")
                with open(p) as f:
                    d = json.load(f)
                d.setdefault("raft", {}).update(raft or {})
                with open(p, "w") as f:
                    json.dump(d, f)
        self.fleet = FleetInfo.load(self.fleet_path)
        # the fleet's own tenant, tokens reused for half their lifetime (as an app would)
        self.token = local_token_source(self.dir, self.fleet.fleet_id, lifetime=900)
        self.channel = for_fleet(self.fleet)  # TLS 1.3 pinned to the fleet CA, as clients do
        self.fresh_connections = False  # True: every request on a new connection
        self.cluster = LocalCluster(self.dir)
        self.guess_users: list[bytes] = []
        self.real_users: list[tuple[bytes, bytes]] = []
        self._record: bytes | None = None
        self._counter = itertools.count()
        self._ke1s: list[bytes] = []

    def start(self) -> float:
        t0 = time.perf_counter()
        self.cluster.start()
        self.cluster.wait_leader(60)
        self.cluster.wait_healthy(timeout=60)
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.cluster.stop()

    def conn(self, i: int) -> Connection:
        return Connection(self.fleet.nodes[i % len(self.fleet.nodes)].api, channel=self.channel,
                         reuse=not self.fresh_connections, token=self.token)

    def entry_points(self) -> tuple[int, int]:
        """(index of the leader, index of a follower) in the fleet's node list."""
        return cluster_entry_points(self.cluster)

    def _register(self, c: Connection, user: bytes, code: bytes) -> tuple[bytes, dict]:
        """(record, enroll/start reply with the single-use ticket)."""
        reg = flows.Registration(self.fleet, user, code)
        st, out = c.post("/v1/enroll/start", reg.start_body())
        assert st == 200, out
        return reg.finish(out), out

    def enroll_one(self, c: Connection, user: bytes, record: bytes,
                   start: dict | None = None) -> bool:
        """Enroll ``record`` for ``user``.  Without ``start`` (guess-only users
        sharing one template record), a ticket of the user's own is fetched:
        their logins never verify, which a guess-only user never needs."""
        if start is None:
            st, start = c.post("/v1/enroll/start", flows.enroll_start_body(user, self._request))
            assert st == 200, start
        st, _ = c.post("/v1/enroll/finish", flows.enroll_finish_body(
            self.fleet, user, record, start, b"bench secret " + user, ATTEMPTS_PER_BENCH_USER))
        return st == 201

    def prepare(self, guess_users: int, real_users: int) -> None:
        c = self.conn(0)
        # Guess-only users share one real OPAQUE record (the server cannot tell and does
        # the same work); users that recover need their own registration (client Argon2id).
        self._record, _ = self._register(c, b"bench-template", b"template code")
        self._request = opaque.ClientRegistration.start(b"template code", ksf=self.fleet.ksf)[1]
        users = [f"g{i}".encode() for i in range(guess_users)]

        def enroll_range(k: int) -> None:
            cc = self.conn(k)
            for u in users[k::8]:
                assert self.enroll_one(cc, u, self._record)
            cc.close()
        ts = [threading.Thread(target=enroll_range, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.guess_users = users
        for i in range(real_users):
            u, code = f"r{i}".encode(), f"code {i}".encode()
            assert self.enroll_one(c, u, *self._register(c, u, code))
            self.real_users.append((u, code))
        self._ke1s = [opaque.ClientLogin.start(b"a wrong code", ksf=self.fleet.ksf,
                                               context=self.fleet.context)[1] for _ in range(256)]
        c.close()

    # -- workloads
    def guess_op(self, i: int):
        c = self.conn(i)
        ke1s = self._ke1s

        def op() -> bool:
            n = next(self._counter)
            user = self.guess_users[(n // (ATTEMPTS_PER_BENCH_USER - 5)) % len(self.guess_users)]
            st, out = c.post("/v1/recover/start",
                             flows.recover_start_body(user, ke1s[n % len(ke1s)]))
            return st == 200
        return op

    def unknown_guess_op(self, i: int):
        """Guesses for users never enrolled: a committed attempt and a fake KE2
        (256 names in turn, their tokens minted before the clock starts, as the
        enrolled users' are)."""
        c = self.conn(i)
        ke1s, seq = self._ke1s, itertools.count()
        names = [b"nobody-%d" % k for k in range(256)]
        for u in names:
            self.token(u)

        def op() -> bool:
            n = next(seq)
            st, _ = c.post("/v1/recover/start",
                           flows.recover_start_body(names[n % len(names)], ke1s[n % len(ke1s)]))
            return st == 200
        return op

    def guesses_left(self) -> int:
        used = next(self._counter)
        return len(self.guess_users) * (ATTEMPTS_PER_BENCH_USER - 5) - used

    def recover_phases(self, c: Connection, user: bytes, code: bytes, ksf=None) -> dict:
        """A right-code recovery, each phase timed (seconds)."""
        t0 = time.perf_counter()
        login = flows.Login(self.fleet, user, code, ksf=ksf)
        t1 = time.perf_counter()
        st, out = c.post("/v1/recover/start", login.start_body())
        t2 = time.perf_counter()
        if st != 200:
            raise RuntimeError(f"recover/start: {st} {out}")
        login.finish(out)
        t3 = time.perf_counter()
        st, out2 = c.post("/v1/recover/finish", login.finish_body())
        t4 = time.perf_counter()
        if st != 200:
            raise RuntimeError(f"recover/finish: {st} {out2}")
        login.open_release(out2)
        t5 = time.perf_counter()
        return {"client_start": t1 - t0, "start_rtt": t2 - t1, "client_finish": t3 - t2,
                "finish_rtt": t4 - t3, "client_open": t5 - t4, "total": t5 - t0}

    def node_rss(self) -> dict:
        out = {}
        for nid in self.cluster.ids:
            pid = self.cluster.pid(nid)
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            out[nid] = int(line.split()[1]) * 1024
            except OSError:
                pass
        return out


def ke2_costs(n: int) -> tuple[Result, Result]:
    """KE2 for an enrolled user and the fake one for an unknown user, computed
    in process (no commit): the fake must cost what the real one does."""
    setup = opaque.ServerSetup.generate()
    cred = os.urandom(M.CRED_ID_LEN)
    reg, req = opaque.ClientRegistration.start(b"a code", ksf=IDENTITY_KSF)
    record = reg.finish(opaque.server_registration_response(setup, req, cred)).record
    ke1 = opaque.ClientLogin.start(b"a wrong code", ksf=IDENTITY_KSF)[1]
    users = itertools.count()
    real = lambda: bool(opaque.server_login_start(setup, record, ke1, cred))  # noqa: E731
    fake = lambda: bool(opaque.server_login_start(  # noqa: E731
        setup, None, ke1, b"nobody-%d" % next(users)))
    out = []
    for name, op in (("KE2 compute, enrolled user (in process)", real),
                     ("KE2 compute, unknown user (in process)", fake)):
        timed(n // 4, op, "warm-up")
        out.append(timed(n, op, name))
    return out[0], out[1]


def token_cost(vb: VaultBench, n: int) -> Result:
    """What checking a tenant token costs a node per request (in process: the
    signature, the claims, the rate buckets), on the fleet's own tenant list."""
    gate = Gate(vb.cluster.node_dir(vb.cluster.ids[0]), vb.fleet.fleet_id,
                NodeConfig.load(vb.cluster.node_dir(vb.cluster.ids[0])).admin_key)
    token = vb.token(b"bench-user")

    def op() -> bool:
        gate.admit(gate.authorize(token, b"bench-user"), b"bench-user")
        return True
    timed(n // 4, op, "warm-up")
    return timed(n, op, "tenant token check (in process)")


def run_vault(cfg: Config, res: dict) -> None:
    vb = VaultBench(cfg, cfg.nodes, f"vault{cfg.nodes}")
    try:
        _progress(cfg, f"vault: starting a {cfg.nodes}-node cluster")
        vb.start()
        # the warm-up (4 workers, up to 2 s) guesses too: without it a fast short
        # run used every user up and its last phases (the target check) only failed
        n_guess_users = max(20, int((len(cfg.concurrency) * cfg.duration
                                     + min(2.0, cfg.duration)) * 1500
                                    / (ATTEMPTS_PER_BENCH_USER - 5)) + cfg.samples // 50)
        _progress(cfg, f"vault: enrolling {n_guess_users} guess users and 4 recovering users")
        vb.prepare(n_guess_users, 4)
        _progress(cfg, "vault: warm-up")
        closed_loop("warmup", vb.guess_op, 4, min(2.0, cfg.duration))
        lead, follower = vb.entry_points()
        c = vb.conn(lead)
        out: dict = {"c1": {}, "curve": {}, "via_follower": {}}
        if "guess" in cfg.workloads:
            _progress(cfg, f"vault: {cfg.samples} guesses at concurrency 1, through the leader "
                           "and through a follower")
            out["c1"]["guess"] = timed(cfg.samples, vb.guess_op(lead), "vault guess commit")
            out["via_follower"]["guess"] = timed(cfg.samples, vb.guess_op(follower),
                                                 "vault guess commit")
            _progress(cfg, f"vault: {cfg.samples} guesses for unknown users (fake KE2), and "
                           "KE2 computed in process for an enrolled and an unknown user")
            pair = timed_interleaved(cfg.samples, {
                "vault guess commit, enrolled user (interleaved)": vb.guess_op(lead),
                "vault guess commit, unknown user (interleaved)": vb.unknown_guess_op(lead)})
            out["c1"]["guess_enrolled_pair"], out["c1"]["guess_unknown"] = pair.values()
            out["c1"]["ke2_real"], out["c1"]["ke2_fake"] = ke2_costs(cfg.samples * 4)
            out["c1"]["token_verify"] = token_cost(vb, cfg.samples * 4)
        if "enroll" in cfg.workloads:
            _progress(cfg, f"vault: {cfg.samples // 2} enrollments at concurrency 1")
            seq = itertools.count()
            out["c1"]["enroll"] = timed(cfg.samples // 2, lambda: vb.enroll_one(
                c, f"e{next(seq)}".encode(), vb._record), "vault enroll commit")
        if "release" in cfg.workloads or "full_recovery" in cfg.workloads:
            n = max(10, cfg.samples // 6)
            _progress(cfg, f"vault: {n} right-code recoveries (client Argon2id included)")
            release, full_server, full_total = (Result("vault key release commit", 1, "closed", 0),
                                                Result("vault full recovery (server side)", 1,
                                                       "closed", 0),
                                                Result("vault full recovery (incl. client)", 1,
                                                       "closed", 0))
            t0 = time.perf_counter()
            phases = []
            for k in range(n):
                u, code = vb.real_users[k % len(vb.real_users)]
                ph = vb.recover_phases(c, u, code)
                phases.append(ph)
                release.hist.record_value(int(ph["finish_rtt"] * 1e6))
                full_server.hist.record_value(int((ph["start_rtt"] + ph["finish_rtt"]) * 1e6))
                full_total.hist.record_value(int(ph["total"] * 1e6))
                for r in (release, full_server, full_total):
                    r.ok += 1
            for r in (release, full_server, full_total):
                r.duration = time.perf_counter() - t0
            # The target excludes the client's Argon2id, but in a real recovery
            # its ~20 ms sit between the two round trips and leave the nodes
            # idle and their caches cold.  The same recoveries again, with the
            # client's stretch remembered (it is the same for the same code):
            # the two commits and the OPAQUE work of both sides, back to back.
            _progress(cfg, f"vault: {n} right-code recoveries, client Argon2id remembered")
            no_ksf = Result("vault full recovery (no client KSF)", 1, "closed", 0)
            remembered = _RememberedKSF(vb.fleet.ksf)
            t0 = time.perf_counter()
            for k in range(n + len(vb.real_users)):
                u, code = vb.real_users[k % len(vb.real_users)]
                ph = vb.recover_phases(c, u, code, ksf=remembered)
                if k >= len(vb.real_users):  # the first of each user computes the stretch
                    no_ksf.hist.record_value(int((ph["start_rtt"] + ph["finish_rtt"]) * 1e6))
                    no_ksf.ok += 1
            no_ksf.duration = time.perf_counter() - t0
            out["c1"]["release"] = release
            out["c1"]["full_recovery_server"] = full_server
            out["c1"]["full_recovery_no_ksf"] = no_ksf
            out["c1"]["full_recovery_total"] = full_total
            out["client_phases_ms"] = {
                k: round(1000 * sorted(p[k] for p in phases)[len(phases) // 2], 3)
                for k in phases[0]}
        if "guess" in cfg.workloads:
            for conc in cfg.concurrency:
                _progress(cfg, f"vault: guesses at concurrency {conc}: closed loop "
                               f"{cfg.duration / 2:.1f}s, then open loop at "
                               f"{int(cfg.open_fraction * 100)}% of it")
                cl = closed_loop("vault guess", vb.guess_op, conc, cfg.duration / 2)
                rate = max(1.0, cl.throughput * cfg.open_fraction)
                ol = open_loop("vault guess", vb.guess_op, conc, rate, cfg.duration / 2)
                out["curve"][conc] = {"closed": cl, "open": ol}
                s = ol.summary()
                _progress(cfg, f"   {cl.throughput:.0f}/s max; at {rate:.0f}/s p50 "
                               f"{s.get('p50_ms')} ms p99 {s.get('p99_ms')} ms")
        if "guess" in cfg.workloads and cfg.target_rate:
            conc = max(cfg.concurrency)
            _progress(cfg, f"vault: target check, open loop at {cfg.target_rate:.0f} guesses/s, "
                           f"concurrency {conc}")
            before = {n: (vb.cluster.status(n) or {}) for n in vb.cluster.ids}
            timeline: list = []
            out["target"] = open_loop(f"vault guess @ {cfg.target_rate:.0f}/s, c{conc}",
                                      vb.guess_op, conc, cfg.target_rate, cfg.duration / 2,
                                      timeline=timeline)
            after = {n: (vb.cluster.status(n) or {}) for n in vb.cluster.ids}
            # what a reader needs to explain a tail: its worst second, and which
            # nodes compacted their journals (snapshot + rewrite) during the check
            out["target_detail"] = {
                "slowest_second": slowest_second(timeline),
                "compacted": [f"{n} ({before[n].get('role')})" for n in vb.cluster.ids
                              if isinstance(after[n].get("log_start"), int)
                              and after[n]["log_start"] > (before[n].get("log_start") or 0)]}
        out["rss_bytes"] = vb.node_rss()
        st = vb.cluster.status(vb.cluster.leader() or vb.cluster.ids[0]) or {}
        out["leader_journal_syncs"] = st.get("journal_syncs")
        out["leader_commit_index"] = st.get("commit_index")
        c.close()
        res["vault"] = out
    finally:
        vb.stop()


# ------------------------------------------------------------- raw pysyncobj

def run_raw(cfg: Config, res: dict) -> None:
    d = os.path.join(cfg.out, "work", "raw")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    fleet = init_fleet(d, cfg.nodes, base_port=free_base(cfg.nodes))
    cl = LocalCluster(d, node_cmd=[sys.executable, "-m", "vault_raft.bench.rawnode"])
    info = FleetInfo.load(fleet)
    channel = for_fleet(info)
    try:
        _progress(cfg, "raw pysyncobj: starting a counter cluster on the same replica stack")
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
            _progress(cfg, f"raw pysyncobj: concurrency {conc}")
            c1 = closed_loop("raw pysyncobj increment", inc_op, conc, cfg.duration / 2)
            rate = max(1.0, c1.throughput * cfg.open_fraction)
            out["curve"][conc] = {"closed": c1, "open": open_loop(
                "raw pysyncobj increment", inc_op, conc, rate, cfg.duration / 2)}
        res["pysyncobj"] = out
    finally:
        cl.stop()


# ---------------------------------------------------------------------- etcd

def run_etcd(cfg: Config, res: dict) -> None:
    try:
        binary = E.ensure_etcd(lambda m: _progress(cfg, m))
    except E.EtcdUnavailable as exc:
        _progress(cfg, f"etcd: skipped ({exc})")
        res["etcd"] = {"unavailable": str(exc)}
        return
    d = os.path.join(cfg.out, "work", "etcd")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    ec = E.EtcdCluster(d, free_base(3) + 200)
    try:
        _progress(cfg, "etcd: starting a 3-member cluster (default durable settings)")
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
            _progress(cfg, f"etcd: CAS increments at concurrency {conc}")
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


# ---------------------------------------------------------- sizes and growth

def run_ab(cfg: Config, variants: dict[str, dict], label: str,
           rounds: int = 4) -> dict:
    """Guesses on two (or more) fleets that differ in one setting (``variants``:
    name -> VaultBench keyword arguments), all up at once and measured in
    alternating blocks so that drift on the machine hits them alike: at
    concurrency 1 through the leader, and closed-loop throughput."""
    benches: dict[str, VaultBench] = {}
    try:
        per_round = max(50, cfg.samples // rounds)
        conc = max(cfg.concurrency)
        for t, kwargs in variants.items():  # one after the other: the first holds its ports
            _progress(cfg, f"{label} A/B: starting the {t} cluster")
            vb = benches[t] = VaultBench(cfg, cfg.nodes, f"{label}-{t}", **kwargs)
            vb.start()
            vb.prepare((per_round * rounds + 3000) // (ATTEMPTS_PER_BENCH_USER - 5) + 4 * conc, 0)
            closed_loop("warmup", vb.guess_op, 2, 1.0)
        c1 = {t: Result(f"vault guess, {label} {t}", 1, "closed", 0.0) for t in benches}
        thr: dict = {t: [] for t in benches}
        for k in range(rounds):
            for t, vb in (benches.items() if k % 2 == 0 else reversed(benches.items())):
                _progress(cfg, f"{label} A/B round {k + 1}/{rounds}: {t}")
                r = timed(per_round, vb.guess_op(vb.entry_points()[0]), t)
                c1[t].hist.add(r.hist)
                c1[t].ok += r.ok
                c1[t].errors += r.errors
                c1[t].duration += r.duration
                thr[t].append(closed_loop(f"vault guess c={conc}, {t}", vb.guess_op, conc,
                                          max(1.0, cfg.duration / rounds)))
        return {t: {"c1": c1[t],
                    "throughput": round(sum(r.ok for r in thr[t]) /
                                        sum(r.duration for r in thr[t]), 1),
                    "concurrency": conc}
                for t in benches}
    finally:
        for vb in benches.values():
            vb.stop()


def run_mark_ab(cfg: Config, res: dict, rounds: int = 4) -> None:
    """The durability mark's cost: its extra write and fdatasync after each
    journal sync, against a fleet with the mark switched off."""
    res["mark"] = run_ab(cfg, {"with": {}, "without": {"raft": {"durability_mark": 0}}},
                         "mark", rounds)


def run_channel_ab(cfg: Config, res: dict, rounds: int = 4) -> None:
    """The client channel's cost: guesses at concurrency 1 through TLS 1.3 (the
    default: pinned to the fleet CA) and through plain HTTP (a second fleet made
    with ``--insecure-http``), both clusters up at once and measured in
    alternating blocks.  Each block is taken twice: over a kept-alive connection
    (the load generator's, and any client that keeps its connection) and with a
    new connection per guess (TCP + handshake each time: what the library
    client's one-call-per-request transport pays)."""
    benches: dict[str, VaultBench] = {}
    try:
        per_round = max(25, cfg.samples // rounds)
        for name, tls in (("tls", True), ("plain", False)):  # the first holds its ports
            _progress(cfg, f"channel A/B: starting the {name} cluster")
            vb = benches[name] = VaultBench(cfg, cfg.nodes, f"channel-{name}", api_tls=tls)
            vb.start()
            vb.prepare((2 * per_round * rounds + 1500) // (ATTEMPTS_PER_BENCH_USER - 5) + 4, 0)
            closed_loop("warmup", vb.guess_op, 2, 1.0)
        label = {"tls": "TLS 1.3 (pinned)", "plain": "plain HTTP"}
        out = {t: {mode: Result(f"vault guess, {label[t]}, {mode}", 1, "closed", 0.0)
                   for mode in ("keepalive", "new_connection")} for t in benches}
        for k in range(rounds):
            for t, vb in (benches.items() if k % 2 == 0 else reversed(benches.items())):
                _progress(cfg, f"channel A/B round {k + 1}/{rounds}: {t}")
                lead = vb.entry_points()[0]
                for mode in ("keepalive", "new_connection"):
                    vb.fresh_connections = mode == "new_connection"
                    op = vb.guess_op(lead)
                    vb.fresh_connections = False
                    op()  # the block's connection is opened outside the clock
                    r = timed(per_round, op, t)
                    acc = out[t][mode]
                    acc.hist.add(r.hist)
                    acc.ok += r.ok
                    acc.errors += r.errors
                    acc.duration += r.duration
        res["channel"] = out
    finally:
        for vb in benches.values():
            vb.stop()


def run_sizes(cfg: Config, res: dict) -> None:
    out = {}
    for n in cfg.sizes:
        vb = VaultBench(cfg, n, f"size{n}")
        try:
            _progress(cfg, f"cluster size {n}: start, then guesses at concurrency 1")
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
    if not st or "log_start" not in st:
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
            _progress(cfg, f"growth: {n} records: build the state and its snapshot")
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
            _progress(cfg, f"growth: {n} records: restart from snapshot "
                           f"({size / 1e6:.1f} MB) and measure")
            t_restart = vb.start()
            rss = vb.node_rss()
            vb.guess_users = [f"s{i}".encode() for i in range(min(n, 1000))]
            vb._ke1s = [opaque.ClientLogin.start(b"wrong", ksf=vb.fleet.ksf,
                                                 context=vb.fleet.context)[1] for _ in range(32)]
            guess = timed(cfg.samples, vb.guess_op(vb.entry_points()[0]),
                          f"vault guess, {n} records")
            _progress(cfg, f"growth: {n} records: guesses while the leader takes a snapshot")
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


# ------------------------------------------------------------------ the run

def run(cfg: Config) -> dict:
    os.makedirs(cfg.out, exist_ok=True)
    res: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                 "config": {k: v for k, v in cfg.__dict__.items() if k not in ("results",)}}
    t0 = time.perf_counter()
    if "floor" in cfg.compare:
        _progress(cfg, "floor: fsync latency and loopback round trip")
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
