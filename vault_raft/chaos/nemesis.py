"""The campaign's nemesis: a seeded fault schedule (partitions, kills, pauses,
slow and lossy links, clock steps, disk damage, a host cut off) and the thread that injects
and heals each fault on the real nodes, recording it in the history."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from vault_raft.chaos.disk import KINDS as DISK_KINDS
from vault_raft.chaos.disk import damage
from vault_raft.chaos.history import History
from vault_raft.chaos.proxy import ProxyNet
from vault_raft.chaos.skewclock import set_offset
from vault_raft.ops.cluster import LocalCluster
from vault_raft.ops.netns import NetnsNet

NEMESES = ("partition", "kill", "pause", "slow", "lossy", "clock", "disk", "cut")
#: the faults the proxies between nodes inject: not on a namespace fleet (netns)
PROXY_NEMESES = ("partition", "slow", "lossy")
#: the faults of a namespace fleet only: a host's link down (``cut``)
NETNS_NEMESES = ("cut",)


@dataclass
class Fault:
    start: float
    end: float
    kind: str
    params: dict


def schedule(seed: int, duration: float, kinds: tuple[str, ...], nodes: list[str]) -> list[Fault]:
    """The fault schedule: a pure function of the seed (targets like "leader" are
    resolved when the fault starts)."""
    rng = random.Random(seed)
    out, t = [], 3.0
    n = len(nodes)
    while kinds and t < duration - 3.0:
        length = rng.uniform(2.0, 6.0)
        kind = rng.choice(kinds)
        p: dict = {}
        if kind == "partition":
            shapes = ["halves", "isolate-leader", "isolate", "one-way"]
            if n >= 5:
                shapes += ["majority-ring", "bridge"]
            p["shape"] = rng.choice(shapes)
            order = nodes[:]
            rng.shuffle(order)
            p["order"] = order
        elif kind in ("kill", "pause", "disk", "cut"):
            p["target"] = rng.choice(["leader", "random"])
            p["pick"] = rng.randrange(n)
            if kind == "disk":  # the node is stopped and one file of its disk damaged
                p["damage"] = rng.choice(DISK_KINDS)
                p["seed"] = rng.randrange(1 << 30)
        elif kind == "slow":
            p["delay"] = round(rng.uniform(0.02, 0.15), 3)
        elif kind == "lossy":
            p["resets_per_s"] = round(rng.uniform(0.5, 3.0), 2)
        elif kind == "clock":  # steps beyond the attempt lifetime (120 s) included
            p["target"] = rng.choice(["leader", "random"])
            p["pick"] = rng.randrange(n)
            p["offset_s"] = round(rng.choice([-1, 1]) * rng.uniform(2.0, 200.0), 1)
        end = min(t + length, duration - 1.0)
        out.append(Fault(round(t, 3), round(end, 3), kind, p))
        t = end + rng.uniform(1.5, 4.0)
    return out


def partition_groups(shape: str, order: list[str], leader: str | None) -> list[list[str]] | dict:
    n = len(order)
    if shape == "halves":
        k = n // 2
        return [order[:k], order[k:]]
    if shape in ("isolate", "isolate-leader"):
        x = leader if shape == "isolate-leader" and leader else order[0]
        return [[x], [m for m in order if m != x]]
    if shape == "majority-ring":  # each node sees its two ring neighbours: a majority of 5
        return {"ring": order}
    if shape == "bridge":  # two halves joined by one node that sees both
        k = n // 2
        return {"bridge": order[k], "left": order[:k], "right": order[k + 1:]}
    if shape == "one-way":
        return {"one_way": (order[0], order[1])}
    raise ValueError(shape)


class Nemesis:
    def __init__(self, cluster: LocalCluster, net: ProxyNet, hist: History,
                 plan: list[Fault], rng_seed: int, hosts: NetnsNet | None = None):
        self.cluster, self.net, self.hist, self.plan = cluster, net, hist, plan
        self.hosts = hosts  # the namespace network (cut), on a netns fleet
        self.current: str = "none"
        self.injected: dict[str, int] = {}
        self._rng = random.Random(rng_seed + 1)
        self._down: list[str] = []
        self._paused: list[str] = []
        self._skewed: list[str] = []

    def _target(self, p: dict) -> str:
        ids = self.cluster.ids
        if p.get("target") == "leader":
            leader = self.cluster.leader()
            if leader:
                return leader
        return ids[p.get("pick", 0) % len(ids)]

    def start_fault(self, f: Fault) -> dict:
        p = dict(f.params)
        if f.kind == "partition":
            g = partition_groups(p["shape"], p["order"], self.cluster.leader())
            if isinstance(g, list):
                self.net.partition(g)
                p["groups"] = g
            elif "ring" in g:
                ring = g["ring"]
                n = len(ring)
                for i, x in enumerate(ring):
                    for j, y in enumerate(ring):
                        if i < j and (j - i) % n not in (1, n - 1):
                            self.net.cut(x, y)
                p["ring"] = ring
            elif "bridge" in g:
                for x in g["left"]:
                    for y in g["right"]:
                        self.net.cut(x, y)
                p.update(g)
            else:
                src, dst = g["one_way"]
                self.net.block(src, dst)
                p["one_way"] = [src, dst]
        elif f.kind == "kill":
            t = self._target(p)
            self.cluster.kill(t)
            self._down.append(t)
            p["node"] = t
        elif f.kind == "disk":
            t = self._target(p)
            self.cluster.stop([t])
            p["did"] = damage(self.cluster.node_dir(t), p["damage"], random.Random(p["seed"]))
            self._down.append(t)
            p["node"] = t
        elif f.kind == "cut":  # the host's link down: it hears and answers nothing
            if self.hosts is None:
                raise ValueError("the cut nemesis needs a namespace fleet (netns)")
            t = self._target(p)
            self.hosts.cut(t)
            p["node"] = t
        elif f.kind == "pause":
            t = self._target(p)
            self.cluster.pause(t)
            self._paused.append(t)
            p["node"] = t
        elif f.kind == "slow":
            self.net.slow(p["delay"])
        elif f.kind == "lossy":
            self.net.lossy(p["resets_per_s"])
        elif f.kind == "clock":
            t = self._target(p)
            set_offset(self.cluster.node_dir(t), p["offset_s"])
            self._skewed.append(t)
            p["node"] = t
        self.injected[f.kind] = self.injected.get(f.kind, 0) + 1
        return p

    def heal(self) -> None:
        self.net.heal()
        if self.hosts is not None:
            self.hosts.restore_all()
        for t in self._skewed:
            set_offset(self.cluster.node_dir(t), 0.0)
        self._skewed = []
        for t in self._paused:
            self.cluster.resume(t)
        self._paused = []
        if self._down:
            self.cluster.start(self._down)
        self._down = []

    def run(self, t0: float, stop: threading.Event) -> None:
        for f in self.plan:
            if stop.wait(max(0.0, t0 + f.start - time.monotonic())):
                break
            params = self.start_fault(f)
            rec = self.hist.fault(f.kind, params)
            self.current = f"{f.kind} {params.get('shape') or params.get('node') or ''}".strip()
            end = t0 + f.end
            while time.monotonic() < end and not stop.is_set():
                if f.kind == "lossy":
                    self.net.tick_resets(0.1)
                time.sleep(0.1)
            self.heal()
            self.hist.end_fault(rec)
            self.current = "none"
        self.heal()
