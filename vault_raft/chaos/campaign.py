"""A fault-injection campaign against real node processes.

Owners enroll, recover, change their secret and sometimes mistype; attackers
guess wrong codes against victim records with small limits; a seeded nemesis
partitions, kills, pauses, slows and breaks links while they run.  Every
operation lands in a :class:`History`; the checkers judge it afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vault_raft.chaos.actor import Actor
from vault_raft.chaos.checker import Verdict, check_all
from vault_raft.chaos.history import History
from vault_raft.chaos.nemesis import NEMESES, Fault, Nemesis, partition_groups, schedule
from vault_raft.chaos.proxy import ProxyNet
from vault_raft.core.results import Code
from vault_raft.fleet.create import init_fleet
from vault_raft.fleet.tenants import local_token_source
from vault_raft.ops.cluster import LocalCluster, free_base_port, wait_until
from vault_raft.ops.netns import NetnsNet, init_netns_fleet

__all__ = ["NEMESES", "Actor", "CampaignConfig", "CampaignResult", "Fault", "Nemesis",
           "partition_groups", "run_campaign", "schedule", "timeline", "write_outputs"]


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
    netns: bool = False  # every node on its own host: a network namespace (ops.netns)
    raft: dict = field(default_factory=dict)  # RaftSettings overrides for every node
    extra: dict = field(default_factory=dict)


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
    hosts = None
    if cfg.netns:  # each node on its own host; faults by link, not by proxy
        hosts = NetnsNet([f"n{i}" for i in range(1, cfg.nodes + 1)], random.Random())
        hosts.up()
    net = ProxyNet(cfg.seed)
    try:
        if hosts is not None:
            init_netns_fleet(fleet_dir, hosts)
        else:
            init_fleet(fleet_dir, cfg.nodes,
                       base_port=free_base_port(cfg.nodes, start=31000, step=211))
            _wire_proxies(fleet_dir, net)
    except BaseException:
        net.close()
        if hosts is not None:
            hosts.close()
        raise
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
    cluster = LocalCluster(fleet_dir, node_cmd=node_cmd, env=cfg.node_env,
                           wrap=hosts.wrap if hosts is not None else None)
    fleet = cluster.fleet
    token = local_token_source(fleet_dir, fleet.fleet_id, lifetime=900)  # the operator's tenant
    urls = dict(cluster.api)
    hist = History()
    plan = schedule(cfg.seed, cfg.duration, tuple(cfg.nemesis), list(cluster.ids))
    stop = threading.Event()
    limits: dict[str, int] = {}
    threads: list[threading.Thread] = []
    nem = Nemesis(cluster, net, hist, plan, cfg.seed, hosts)
    try:
        say(f"{cfg.nodes} nodes{' (one network namespace each)' if hosts else ''}, "
            f"{cfg.duration:.0f}s, nemesis {','.join(cfg.nemesis) or 'none'}, "
            f"seed {cfg.seed}: {len(plan)} faults planned")
        cluster.start()
        cluster.wait_leader(60)
        cluster.wait_healthy(timeout=60)
        setup = Actor("setup", fleet, hist, random.Random(cfg.seed), urls, timeout=10,
                      token=token)
        owners = [(f"owner-{i}", f"owner code {i}".encode()) for i in range(cfg.owners)]
        victims = [f"victim-{i}" for i in range(cfg.victims)]

        def enrolled(user: str, code: bytes, limit: int) -> Callable[[], bool]:
            return lambda: setup.enroll(user, code, os.urandom(16), limit) in ("ok", Code.EXISTS)
        for user, code in owners:
            wait_until(enrolled(user, code, 100), 30, 0.2, f"enrolling {user}")
        for v in victims:
            wait_until(enrolled(v, b"the victim's code", cfg.victim_limit), 30, 0.2,
                       f"enrolling {v}")
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
            if hosts is not None:
                hosts.close()
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
        json.dump({"seed": cfg.seed, "nodes": cfg.nodes, "netns": cfg.netns,
                   "duration": cfg.duration,
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
              "slow": "#c9f4b6", "lossy": "#e0b6f4",
              "cut": "#f4c6e0"}
    top = 1.0
    done = [(o.invoke, o.complete, o.outcome) for o in hist.ops if o.complete is not None]
    if done:
        top = max(max(end - start for start, end, _ in done) * 1000, 1.0) * 2
    for f in hist.faults:
        end = f.end if f.end is not None else f.start
        ax.axvspan(f.start, end, color=colors.get(f.f, "#dddddd"), alpha=0.6, lw=0)
        ax.text(f.start, top, f.f, fontsize=7, va="top", rotation=90)
    for outcome, color, marker in (("ok", "tab:green", "."), ("fail", "tab:orange", "x")):
        pts = [(start, max((end - start) * 1000, 0.01)) for start, end, out in done
               if out == outcome]
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
