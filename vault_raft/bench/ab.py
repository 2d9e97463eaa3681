"""A/B runs: fleets that differ in one setting (the durability mark, the client
channel, loopback or a network namespace per node), up at once and measured
in alternating blocks."""

from __future__ import annotations

from vault_raft.bench.harness import ATTEMPTS_PER_BENCH_USER, Config, VaultBench, progress
from vault_raft.bench.load import Result, closed_loop, timed
from vault_raft.ops import netns


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
            progress(cfg, f"{label} A/B: starting the {t} cluster")
            vb = benches[t] = VaultBench(cfg, cfg.nodes, f"{label}-{t}", **kwargs)
            vb.start()
            vb.prepare((per_round * rounds + 3000) // (ATTEMPTS_PER_BENCH_USER - 5) + 4 * conc, 0)
            closed_loop("warmup", vb.guess_op, 2, 1.0)
        c1 = {t: Result(f"vault guess, {label} {t}", 1, "closed", 0.0) for t in benches}
        thr: dict = {t: [] for t in benches}
        for k in range(rounds):
            for t, vb in (benches.items() if k % 2 == 0 else reversed(benches.items())):
                progress(cfg, f"{label} A/B round {k + 1}/{rounds}: {t}")
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


def run_netns_ab(cfg: Config, res: dict, rounds: int = 4) -> None:
    """Guesses on a fleet whose nodes each run in their own network namespace
    (own address, a veth pair to a private bridge; this process, the load
    generator, stays in its namespace and reaches them over the bridge) next
    to the same fleet on loopback: the same workload, parameters and blocks.
    Where namespaces cannot be made (not root, no iproute2) the comparison is
    skipped with the reason in ``res["netns"]["skipped"]``."""
    reason = netns.unavailable()
    if reason is None:
        net = netns.NetnsNet([f"n{i}" for i in range(1, cfg.nodes + 1)])
        try:
            net.up()
        except netns.NetnsError as exc:
            reason = f"the namespaces could not be made: {exc}"
    if reason is not None:
        progress(cfg, f"netns A/B: skipped ({reason})")
        res["netns"] = {"skipped": reason}
        return
    try:
        res["netns"] = run_ab(cfg, {"netns": {"net": net}, "loopback": {}}, "netns", rounds)
    finally:
        net.close()  # after the fleets' stop: kills what is left inside by PID


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
            progress(cfg, f"channel A/B: starting the {name} cluster")
            vb = benches[name] = VaultBench(cfg, cfg.nodes, f"channel-{name}", api_tls=tls)
            vb.start()
            vb.prepare((2 * per_round * rounds + 1500) // (ATTEMPTS_PER_BENCH_USER - 5) + 4, 0)
            closed_loop("warmup", vb.guess_op, 2, 1.0)
        label = {"tls": "TLS 1.3 (pinned)", "plain": "plain HTTP"}
        out = {t: {mode: Result(f"vault guess, {label[t]}, {mode}", 1, "closed", 0.0)
                   for mode in ("keepalive", "new_connection")} for t in benches}
        for k in range(rounds):
            for t, vb in (benches.items() if k % 2 == 0 else reversed(benches.items())):
                progress(cfg, f"channel A/B round {k + 1}/{rounds}: {t}")
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
