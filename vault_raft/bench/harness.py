"""The benchmark's setup: its configuration, ports, and a vault fleet ready to measure.

:class:`VaultBench` makes a local fleet, starts it, enrolls the users the
workloads guess at and recover, and hands out the operations that
``vault_raft.bench.load`` times.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field

from vault_raft.api import flows
from vault_raft.api.channel import for_fleet
from vault_raft.api.http import Connection
from vault_raft.crypto import opaque
from vault_raft.fleet.config import FleetInfo
from vault_raft.fleet.create import init_fleet
from vault_raft.fleet.tenants import local_token_source
from vault_raft.ops.cluster import LocalCluster, free_base_port
from vault_raft.ops.netns import NetnsNet, init_netns_fleet

ATTEMPTS_PER_BENCH_USER = 100


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


def progress(cfg: Config, msg: str) -> None:
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


class VaultBench:
    """A local fleet to measure.  With ``net`` (an :class:`~vault_raft.ops.netns.NetnsNet`
    that is up, its nodes n1..nK), every node runs in its own network namespace
    with its own address, and the load generator (in this namespace) reaches
    them over the network's bridge; without it, all nodes listen on 127.0.0.1."""

    def __init__(self, cfg: Config, nodes: int, tag: str, api_tls: bool = True,
                 raft: dict | None = None, net: NetnsNet | None = None):
        self.cfg = cfg
        self.net = net
        self.dir = os.path.join(cfg.out, "work", tag)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        if net is not None:  # every node its own host: the same ports, each on its address
            self.fleet_path = init_netns_fleet(self.dir, net, api_tls=api_tls)
        else:
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
        self.cluster = LocalCluster(self.dir, wrap=net.wrap if net is not None else None)
        self.guess_users: list[bytes] = []
        self.real_users: list[tuple[bytes, bytes]] = []
        self._record: bytes | None = None
        self._counter = itertools.count()
        self._ke1s: list[bytes] = []

    def start(self) -> float:
        t0 = time.perf_counter()
        self.cluster.start()
        if self.net is not None:  # killed by PID with the network, whatever happens
            for nid in self.cluster.ids:
                pid = self.cluster.pid(nid)
                if pid:
                    self.net.track(pid)
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

    @property
    def template_record(self) -> bytes:
        """The OPAQUE record the guess-only users share (set by prepare())."""
        assert self._record is not None, "prepare() registers the template record"
        return self._record

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
                assert self.enroll_one(cc, u, self.template_record)
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
