"""``vault-raft chaos``: a fault-injection campaign against a fresh local cluster."""

from __future__ import annotations

from vault_raft.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("chaos", help="fault-injection campaign with history checkers")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    p.add_argument("--nemesis", default="partition,kill,pause",
                   help="comma-separated: partition,kill,pause,slow,lossy,clock,disk (or 'none')")
    p.add_argument("--seed", type=int, default=0, help="same seed, same fault schedule")
    p.add_argument("--owners", type=int, default=4)
    p.add_argument("--attackers", type=int, default=4)
    p.add_argument("--out", default="runs/chaos", help="history, verdict and picture go here")
    p.add_argument("--no-pre-vote", action="store_true",
                   help="nodes elect as pysyncobj does (to measure what pre-vote changes)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=run)


def run(a) -> int:
    from vault_raft.chaos.campaign import NEMESES, CampaignConfig, run_campaign

    kinds = () if a.nemesis == "none" else tuple(k for k in a.nemesis.split(",") if k)
    bad = [k for k in kinds if k not in NEMESES]
    if bad:
        raise UsageError(f"chaos: unknown nemesis {bad}; choose from {', '.join(NEMESES)}")
    if not 3 <= a.nodes <= 9 or a.duration < 5 or a.owners < 1 or a.attackers < 0:
        raise UsageError("chaos: --nodes 3..9, --duration >= 5, --owners >= 1")
    res = run_campaign(CampaignConfig(out=a.out, nodes=a.nodes, duration=a.duration,
                                      nemesis=kinds, seed=a.seed, owners=a.owners,
                                      attackers=a.attackers, quiet=a.quiet,
                                      raft={"pre_vote": 0} if a.no_pre_vote else {}))
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
