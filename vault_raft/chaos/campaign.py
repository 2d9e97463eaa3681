"""A fault-injection campaign against real node processes.

Owners enroll, recover, change their secret and sometimes mistype; attackers
guess wrong codes against victim records with small limits; a seeded nemesis
partitions, kills, pauses, slows and breaks links while they run.  Every
operation lands in a :class:`History`; the checkers judge it afterwards.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field

from vault_raft.api import flows
from vault_raft.api import http as wire
from vault_raft.api.channel import ChannelError, for_fleet
from vault_raft.chaos.checker import Verdict, check_all
from vault_raft.chaos.disk import KINDS as DISK_KINDS
from vault_raft.chaos.disk import damage
from vault_raft.chaos.history import History, Op
from vault_raft.chaos.proxy import ProxyNet
from vault_raft.chaos.skewclock import set_offset
from vault_raft.core.results import Code
from vault_raft.crypto.errors import OpaqueError
from vault_raft.errors import VaultRaftError
from vault_raft.fleet.config import FleetInfo
from vault_raft.fleet.create import init_fleet
from vault_raft.fleet.tenants import local_token_source
from vault_raft.ops.cluster import LocalCluster, free_base_port, wait_until

NEMESES = ("partition", "kill", "pause", "slow", "lossy", "clock", "disk")


@dataclass
class CampaignConfig:
    out: str
    nodes: int = 3
    duration: float = 60.0
    nemesis: tuple[str, ...] = ("partition", "kill", "pause")
    seed: int = 0
    owners: int = 4
    attackers: int = 4
    victims: int = 30
    victim_limit: int = 30
    node_cmd: list[str] | None = None  # tests only: a deliberately broken node
    node_env: dict | None = None
    quiet: bool = False
    check_budget_s: float = 20.0
    final_timeout: float = 30.0  # per owner: time to get one successful recovery after healing
    raft: dict = field(default_factory=dict)  # RaftSettings overrides for every node
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------- the client

class _Unsent(VaultRaftError):
    """The request never left: certainly no effect."""


class Actor:
    """One client process of the history: picks a node per request, records outcomes."""

    def __init__(self, name: str, fleet: FleetInfo, hist: History, rng: random.Random,
                 urls: dict[str, str], timeout: float = 4.0, token=None):
        self.name, self.fleet, self.hist, self.rng = name, fleet, hist, rng
        self.urls = urls
        self.timeout = timeout
        self.channel = for_fleet(fleet)  # TLS 1.3 pinned to the fleet CA, as clients connect
        self.token = token  # user -> the tenant token its requests carry

    def _post(self, nid: str, path: str, body: dict) -> tuple[int, dict]:
        body = dict(body, deadline_ms=int((time.time() + self.timeout) * 1000))
        if self.token is not None and "user" in body:
            body["auth"] = self.token(body["user"])
        try:
            return wire.call(self.urls[nid], "POST", path, body, self.timeout, self.channel)
        except ChannelError as exc:  # TCP or the TLS handshake: a failure sent nothing
            raise _Unsent(str(exc)) from None
        except wire.WireError as exc:  # an answer that is not a msgpack map
            if exc.status is None:  # (a malformed URL)
                raise
            return exc.status, {}

    def call(self, op: Op, path: str, body: dict):
        """POST and classify: returns (status, out) or records fail/info and returns None."""
        try:
            st, out = self._post(op.node, path, body)
        except _Unsent:
            self.hist.finish(op, "fail", dict(op.value or {}, error="unreachable"))
            return None
        except (OSError, http.client.HTTPException):
            self.hist.finish(op, "info")
            return None
        if st == 503:
            if out.get("proposed") is False:
                self.hist.finish(op, "fail", dict(op.value or {}, error="unavailable"))
            else:
                self.hist.finish(op, "info")
            return None
        return st, out

    def node(self) -> str:
        return self.rng.choice(sorted(self.urls))

    # -- operations
    def enroll(self, user: str, code: bytes, secret: bytes, max_attempts: int) -> str:
        """Returns 'ok', Code.EXISTS, or 'unknown'/'failed' (the outcome is not known,
        or it failed)."""
        reg = flows.Registration(self.fleet, user.encode(), code)
        nid = self.node()
        try:
            st, out = self._post(nid, "/v1/enroll/start", reg.start_body())
        except (OSError, http.client.HTTPException, _Unsent):
            return "failed"
        if st != 200:
            return "failed"
        reg.finish(out)
        op = self.hist.invoke(self.name, "enroll", user, nid,
                              {"max_attempts": max_attempts, "secret": secret.hex()})
        r = self.call(op, "/v1/enroll/finish", reg.enroll_body(secret, max_attempts))
        if r is None:
            return "unknown" if op.outcome == "info" else "failed"
        st, out = r
        if st == 201:
            self.hist.finish(op, "ok")
            return "ok"
        if st == 409:
            self.hist.finish(op, "ok", dict(op.value, error=Code.EXISTS))
            return Code.EXISTS
        self.hist.finish(op, "fail", dict(op.value, error=out.get("error")))
        return "failed"

    def begin(self, user: str, code: bytes):
        """A counted attempt. Returns (login, out) when a KE2 arrived, else None."""
        login = flows.Login(self.fleet, user.encode(), code)
        op = self.hist.invoke(self.name, "begin", user, self.node())
        r = self.call(op, "/v1/recover/start", login.start_body())
        if r is None:
            return None
        st, out = r
        if st == 200:
            self.hist.finish(op, "ok", {"attempts_left": out["attempts_left"]})
            return login, out
        if st == 410:
            self.hist.finish(op, "ok", {"destroyed": True})
            return None
        self.hist.finish(op, "fail", {"error": out.get("error"), "status": st})
        return None

    def complete(self, user: str, login: flows.Login, out: dict, f: str = "complete"):
        """The recovery's second half; returns ``login`` when the secret arrived."""
        try:
            login.finish(out)
        except OpaqueError:
            return None  # wrong code: the guess ended at KE2
        op = self.hist.invoke(self.name, f, user, self.node())
        r = self.call(op, "/v1/recover/finish", login.finish_body())
        if r is None:
            return None
        st, res = r
        if st == 200:
            secret = login.open_release(res)
            self.hist.finish(op, "ok", {"failed_attempts": res["failed_attempts"],
                                        "secret": secret.hex()})
            return login
        if st == 410:
            self.hist.finish(op, "ok", {"destroyed": True})
            return None
        self.hist.finish(op, "fail", {"error": res.get("error"), "status": st})
        return None

    def write(self, user: str, login: flows.Login, secret: bytes) -> None:
        body = login.change_secret_body(secret)
        op = self.hist.invoke(self.name, "write", user, self.node(), {"secret": secret.hex()})
        r = self.call(op, "/v1/manage", body)
        if r is None:
            return
        st, res = r
        self.hist.finish(op, "ok" if st == 200 else "fail",
                         None if st == 200 else dict(op.value, error=res.get("error")))


# ------------------------------------------------------------------ nemesis

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
        elif kind in ("kill", "pause", "disk"):
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
                 plan: list[Fault], rng_seed: int):
        self.cluster, self.net, self.hist, self.plan = cluster, net, hist, plan
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


# --------------------------------------------------------------------- run

@dataclass
class CampaignResult:
    verdicts: list[Verdict]
    history: History
    injected: dict
    ops: dict
    files: dict
    final_term: int | None = None  # how many terms (elections) the run went through

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)


def _wire_proxies(directory: str, net: ProxyNet) -> None:
    cfgs = {}
    for nid in sorted(os.listdir(directory)):
        p = os.path.join(directory, nid, "node.json")
        if os.path.exists(p):
            with open(p) as f:
                cfgs[nid] = json.load(f)
    addr = {nid: c["raft_addr"] for nid, c in cfgs.items()}
    for a in cfgs:
        for b in cfgs:
            if addr[a] > addr[b]:  # pysyncobj: the larger address dials
                host, port = addr[b].rsplit(":", 1)
                lp = net.add_link(a, b, (host, int(port)))
                cfgs[a].setdefault("dial", {})[addr[b]] = f"127.0.0.1:{lp}"
    for nid, c in cfgs.items():
        with open(os.path.join(directory, nid, "node.json"), "w") as f:
            json.dump(c, f, indent=2)


def run_campaign(cfg: CampaignConfig) -> CampaignResult:
    say = (lambda m: None) if cfg.quiet else (
        lambda m: print(f"[chaos {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
    os.makedirs(cfg.out, exist_ok=True)
    fleet_dir = os.path.join(cfg.out, "fleet")
    shutil.rmtree(fleet_dir, ignore_errors=True)
    init_fleet(fleet_dir, cfg.nodes, base_port=free_base_port(cfg.nodes, start=31000, step=211))
    net = ProxyNet(cfg.seed)
    _wire_proxies(fleet_dir, net)
    if cfg.raft:
        for nid in os.listdir(fleet_dir):
            p = os.path.join(fleet_dir, nid, "node.json")
            if os.path.exists(p):
                with open(p) as f:
                    c = json.load(f)
                c["raft"] = dict(c.get("raft", {}), **cfg.raft)
                with open(p, "w") as f:
                    json.dump(c, f, indent=2)
    final_term = None
    node_cmd = cfg.node_cmd
    if node_cmd is None and "clock" in cfg.nemesis:  # nodes whose wall clock can be stepped
        node_cmd = [sys.executable, "-m", "vault_raft.chaos.skewclock", "node"]
    cluster = LocalCluster(fleet_dir, node_cmd=node_cmd, env=cfg.node_env)
    fleet = cluster.fleet
    token = local_token_source(fleet_dir, fleet.fleet_id, lifetime=900)  # the operator's tenant
    urls = dict(cluster.api)
    hist = History()
    plan = schedule(cfg.seed, cfg.duration, tuple(cfg.nemesis), list(cluster.ids))
    stop = threading.Event()
    limits: dict[str, int] = {}
    threads: list[threading.Thread] = []
    nem = Nemesis(cluster, net, hist, plan, cfg.seed)
    try:
        say(f"{cfg.nodes} nodes, {cfg.duration:.0f}s, nemesis {','.join(cfg.nemesis) or 'none'}, "
            f"seed {cfg.seed}: {len(plan)} faults planned")
        cluster.start()
        cluster.wait_leader(60)
        cluster.wait_healthy(timeout=60)
        setup = Actor("setup", fleet, hist, random.Random(cfg.seed), urls, timeout=10,
                      token=token)
        owners = [(f"owner-{i}", f"owner code {i}".encode()) for i in range(cfg.owners)]
        victims = [f"victim-{i}" for i in range(cfg.victims)]
        for user, code in owners:
            wait_until(lambda: setup.enroll(user, code, os.urandom(16), 100)
                       in ("ok", Code.EXISTS), 30, 0.2, f"enrolling {user}")
        for v in victims:
            wait_until(lambda: setup.enroll(v, b"the victim's code", os.urandom(16),
                                            cfg.victim_limit) in ("ok", Code.EXISTS),
                       30, 0.2, f"enrolling {v}")
            limits[v] = cfg.victim_limit
        say(f"enrolled {len(owners)} owners and {len(victims)} victims (limit "
            f"{cfg.victim_limit}); starting {cfg.owners + cfg.attackers} clients and the nemesis")

        def owner_loop(k: int, user: str, code: bytes) -> None:
            a = Actor(f"owner-{k}", fleet, hist, random.Random(cfg.seed * 1000 + k), urls,
                      token=token)
            while not stop.is_set():
                r = a.rng.random()
                if r < 0.2:
                    a.begin(user, b"a typo " + os.urandom(2).hex().encode())
                else:
                    got = a.begin(user, code)
                    if got:
                        done = a.complete(user, *got)
                        if done and r > 0.75:
                            a.write(user, done, os.urandom(16))
                stop.wait(a.rng.uniform(0.01, 0.06))

        def attacker_loop(k: int) -> None:
            a = Actor(f"attacker-{k}", fleet, hist, random.Random(cfg.seed * 1000 + 500 + k),
                      urls, token=token)
            while not stop.is_set():
                a.begin(a.rng.choice(victims), b"guess " + os.urandom(3).hex().encode())
                stop.wait(a.rng.uniform(0.1, 0.3))

        for k, (user, code) in enumerate(owners):
            threads.append(threading.Thread(target=owner_loop, args=(k, user, code), daemon=True))
        for k in range(cfg.attackers):
            threads.append(threading.Thread(target=attacker_loop, args=(k,), daemon=True))
        for t in threads:
            t.start()
        t0 = time.monotonic()
        nem_thread = threading.Thread(target=nem.run, args=(t0, stop), daemon=True)
        nem_thread.start()
        while time.monotonic() - t0 < cfg.duration:
            time.sleep(min(5.0, max(0.1, cfg.duration - (time.monotonic() - t0))))
            counts = _counts(hist)
            say(f"t={time.monotonic() - t0:5.1f}s  ops ok {counts['ok']} fail {counts['fail']} "
                f"info {counts['info']}  fault: {nem.current}")
        stop.set()
        for t in threads:
            t.join(15)
        nem_thread.join(30)
        nem.heal()
        say("healed; waiting for a healthy cluster, then final reads")
        cluster.wait_healthy(timeout=60)
        final = Actor("final", fleet, hist, random.Random(cfg.seed + 7), urls, timeout=10,
                      token=token)
        for user, code in owners:
            deadline = time.monotonic() + cfg.final_timeout
            while time.monotonic() < deadline:
                got = final.begin(user, code)
                if got and final.complete(user, *got, f="final"):
                    break
                time.sleep(0.3)
            else:
                op = hist.invoke("final", "final", user)
                hist.finish(op, "fail", {"error": "no successful final recovery in "
                                                  f"{cfg.final_timeout:.0f}s"})
    finally:
        stop.set()
        try:
            nem.heal()  # resume paused nodes so that they can be stopped cleanly
        finally:
            terms = [(cluster.status(n) or {}).get("term") for n in cluster.ids]
            final_term = max((t for t in terms if isinstance(t, int)), default=None)
            cluster.stop(timeout=10)
            net.close()
    hist.close_pending()
    say("checking the history")
    verdicts = check_all(hist, limits, cfg.check_budget_s)
    files = write_outputs(cfg, hist, verdicts, nem.injected, plan)
    return CampaignResult(verdicts, hist, dict(nem.injected), _counts(hist), files, final_term)


def _counts(hist: History) -> dict:
    c = {"ok": 0, "fail": 0, "info": 0}
    for o in list(hist.ops):
        if o.outcome in c:
            c[o.outcome] += 1
    return c


def write_outputs(cfg: CampaignConfig, hist: History, verdicts: list[Verdict], injected: dict,
                  plan: list[Fault]) -> dict:
    files = {"history": os.path.join(cfg.out, "history.jsonl"),
             "verdict": os.path.join(cfg.out, "verdict.json"),
             "timeline": os.path.join(cfg.out, "timeline.png")}
    hist.write(files["history"])
    with open(files["verdict"], "w") as f:
        json.dump({"seed": cfg.seed, "nodes": cfg.nodes, "duration": cfg.duration,
                   "nemesis": list(cfg.nemesis), "ops": _counts(hist), "faults": injected,
                   "schedule": [f.__dict__ for f in plan],
                   "checkers": [v.__dict__ for v in verdicts],
                   "ok": all(v.ok for v in verdicts)}, f, indent=2)
    timeline(hist, files["timeline"], f"seed {cfg.seed}, {cfg.nodes} nodes")
    return files


def timeline(hist: History, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    colors = {"disk": "#d9b6f4", "partition": "#f4b6b6", "kill": "#b6c8f4", "pause": "#f4e3b6",
              "slow": "#c9f4b6", "lossy": "#e0b6f4"}
    top = 1.0
    done = [o for o in hist.ops if o.complete is not None]
    if done:
        top = max(max(o.complete - o.invoke for o in done) * 1000, 1.0) * 2
    for f in hist.faults:
        end = f.end if f.end is not None else f.start
        ax.axvspan(f.start, end, color=colors.get(f.f, "#dddddd"), alpha=0.6, lw=0)
        ax.text(f.start, top, f.f, fontsize=7, va="top", rotation=90)
    for outcome, color, marker in (("ok", "tab:green", "."), ("fail", "tab:orange", "x")):
        pts = [(o.invoke, max((o.complete - o.invoke) * 1000, 0.01)) for o in done
               if o.outcome == outcome]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, c=color, marker=marker,
                       label=f"{outcome} ({len(pts)})")
    info = [o.invoke for o in hist.ops if o.outcome == "info"]
    if info:
        ax.scatter(info, [top / 2] * len(info), s=14, c="tab:red", marker="|",
                   label=f"unknown outcome ({len(info)})")
    ax.set_yscale("log")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(f"Operations and faults over time ({title}); shaded: fault windows")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
