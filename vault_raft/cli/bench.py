"""``vault-raft bench``: argument parsing and output (the work is in vault_raft.bench)."""

from __future__ import annotations

import json
import os

from vault_raft.errors import UsageError

WORKLOADS_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "bench", "workloads.json")


def _ints(text: str, what: str, lo: int, hi: int) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers") from None
    if not vals or any(not lo <= v <= hi for v in vals):
        raise UsageError(f"{what} values must be in {lo}..{hi}")
    return vals


def register(sub) -> None:
    p = sub.add_parser("bench",
                       help="commit latency/throughput vs etcd, raw pysyncobj, fsync floor")
    p.add_argument("--nodes", type=int, default=3, help="vault cluster size for the main runs")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per concurrency level (half closed loop, half open loop)")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--workload", default="guess,release,enroll,full_recovery")
    p.add_argument("--compare", default="etcd,pysyncobj,floor,channel,mark,netns",
                   help="baselines: any of etcd,pysyncobj,floor,channel,mark,netns (channel: "
                   "guesses through the TLS client channel against plain HTTP; mark: with and "
                   "without the journal's durability mark; netns: every node in its own network "
                   "namespace against loopback, skipped where namespaces cannot be made) or "
                   "'none'")
    p.add_argument("--sizes", default="3,5,7", help="cluster sizes for the concurrency-1 guess")
    p.add_argument("--growth", default="10000,100000,1000000",
                   help="record counts for memory/snapshot/restart ('none' to skip)")
    p.add_argument("--samples", type=int, default=400,
                   help="sequential operations per concurrency-1 figure")
    p.add_argument("--target-rate", type=float, default=1000.0,
                   help="open-loop guesses/s at the highest concurrency (0: skip)")
    p.add_argument("--workloads-file", default=WORKLOADS_FILE)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=run)


def run(a) -> int:
    from vault_raft.bench import report
    from vault_raft.bench.runner import Config, write_json
    from vault_raft.bench.runner import run as run_bench

    try:
        with open(a.workloads_file) as f:
            defs = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"bench: cannot read workload definitions {a.workloads_file}: "
                         f"{exc}") from None
    workloads = tuple(w for w in a.workload.split(",") if w)
    unknown = [w for w in workloads if w not in defs.get("vault", {})]
    if unknown or not workloads:
        raise UsageError(f"bench: unknown workload(s) {unknown}; known: "
                         f"{', '.join(defs.get('vault', {}))}")
    compare = () if a.compare == "none" else tuple(c for c in a.compare.split(",") if c)
    if any(c not in ("etcd", "pysyncobj", "floor", "channel", "mark", "netns") for c in compare):
        raise UsageError("bench: --compare takes etcd, pysyncobj, floor, channel, mark, netns "
                         "or none")
    if not 3 <= a.nodes <= 9 or a.duration <= 0 or a.samples < 10:
        raise UsageError("bench: --nodes 3..9, --duration > 0, --samples >= 10")
    cfg = Config(out=a.out, nodes=a.nodes, duration=a.duration,
                 concurrency=_ints(a.concurrency, "--concurrency", 1, 256),
                 compare=compare,
                 sizes=() if a.sizes == "none" else _ints(a.sizes, "--sizes", 3, 9),
                 growth=() if a.growth == "none" else _ints(a.growth, "--growth", 100,
                                                            5_000_000),
                 samples=a.samples, workloads=workloads, quiet=a.quiet,
                 target_rate=max(0.0, a.target_rate))
    res = run_bench(cfg)
    res["workload_definitions"] = defs
    os.makedirs(a.out, exist_ok=True)
    text = report.table(res)
    path = os.path.join(a.out, "results.json")
    write_json(res, path)
    with open(os.path.join(a.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    pics = report.pictures(res, a.out)
    print(text)
    print(f"\nwrote {path}, {os.path.join(a.out, 'table.txt')}, " + ", ".join(pics))
    return 0
