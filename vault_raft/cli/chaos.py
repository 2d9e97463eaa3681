"""``vault-raft chaos``: a fault-injection campaign against a fresh local cluster."""

from __future__ import annotations

from vault_raft.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("chaos", help="fault-injection campaign with history checkers")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    p.add_argument("--nemesis", default=None,
                   help="comma-separated: partition,kill,pause,slow,lossy,clock,disk; with "
                   "--netns: cut,kill,pause,clock,disk (or 'none'; default partition,kill,pause, "
                   "with --netns cut,kill,pause)")
    p.add_argument("--netns", action="store_true",
                   help="every node on its own host: a network namespace with its own address "
                   "(needs root and iproute2); the cut nemesis takes a host's link down")
    p.add_argument("--seed", type=int, default=0, help="same seed, same fault schedule")
    p.add_argument("--owners", type=int, default=4)
    p.add_argument("--attackers", type=int, default=4)
    p.add_argument("--out", default="runs/chaos", help="history, verdict and picture go here")
    p.add_argument("--no-pre-vote", action="store_true",
                   help="nodes elect as pysyncobj does (to measure what pre-vote changes)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=run)


def run(a) -> int:
    from vault_raft.chaos.campaign import CampaignConfig, run_campaign
    from vault_raft.chaos.nemesis import NEMESES, NETNS_NEMESES, PROXY_NEMESES

    nemesis = a.nemesis or ("cut,kill,pause" if a.netns else "partition,kill,pause")
    kinds = () if nemesis == "none" else tuple(k for k in nemesis.split(",") if k)
    bad = [k for k in kinds if k not in NEMESES]
    if bad:
        raise UsageError(f"chaos: unknown nemesis {bad}; choose from {', '.join(NEMESES)}")
    wrong = [k for k in kinds if k in (PROXY_NEMESES if a.netns else NETNS_NEMESES)]
    if wrong:
        raise UsageError(f"chaos: {', '.join(wrong)} "
                         + ("works on the proxied loopback fleet, not with --netns" if a.netns
                            else "needs --netns (a host per node)"))
    if a.netns:
        from vault_raft.ops.netns import unavailable
        why = unavailable()
        if why:
            raise UsageError(f"chaos: --netns: {why}")
    if not 3 <= a.nodes <= 9 or a.duration < 5 or a.owners < 1 or a.attackers < 0:
        raise UsageError("chaos: --nodes 3..9, --duration >= 5, --owners >= 1")
    res = run_campaign(CampaignConfig(out=a.out, nodes=a.nodes, duration=a.duration,
                                      nemesis=kinds, seed=a.seed, owners=a.owners,
                                      attackers=a.attackers, quiet=a.quiet,
                                      raft={"pre_vote": 0} if a.no_pre_vote else {},
                                      netns=a.netns))
    print(f"\noperations: {res.ops['ok']} ok, {res.ops['fail']} failed, {res.ops['info']} unknown"
          f"; final Raft term {res.final_term}")
    print("faults injected: " + (", ".join(f"{k} x{v}" for k, v in sorted(res.injected.items()))
                                 or "none"))
    print(f"\n{'checker':18} {'result':8} detail")
    for v in res.verdicts:
        print(f"{v.name:18} {v.status.upper():8} {v.detail}")
        for p in v.problems[:10]:
            print(f"{'':27}- {p}")
    print("\nwrote " + ", ".join(res.files.values()))
    return 0 if res.ok else 1
