"""The bench's terminal table (with ratios to every baseline) and its pictures."""

from __future__ import annotations

import os

from vault_raft.bench.load import Result


def _pct(r: Result | None, p: float) -> float | None:
    if r is None or not r.hist.get_total_count():
        return None
    return r.hist.get_value_at_percentile(p) / 1000


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _ratio(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def baselines(res: dict) -> dict[str, Result]:
    out = {}
    et = res.get("etcd", {}).get("c1", {})
    if et:
        out["etcd put"] = et["put"]
        out["etcd CAS"] = et["cas_increment"]
        if "cas_cached" in et:
            out["etcd CAS 1 txn"] = et["cas_cached"]
    raw = res.get("pysyncobj", {}).get("c1", {})
    if raw:
        out["pysyncobj"] = raw["increment"]
    fl = res.get("floor", {})
    if fl:
        out["fsync"] = fl["fsync"]
    return out


def _row_head(title: str) -> str:
    return (f"{title:42} {'n':>5} {'err':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} "
            f"{'max':>7}")


def _row(name: str, r: Result) -> str:
    return (f"{name[:42]:42} {r.hist.get_total_count():5d} {r.errors:4d} {_fmt(_pct(r, 50)):>7} "
            f"{_fmt(_pct(r, 90)):>7} {_fmt(_pct(r, 99)):>7} {_fmt(_pct(r, 99.9)):>7} "
            f"{_fmt(r.hist.get_max_value() / 1000 if r.hist.get_total_count() else None):>7}")


def table(res: dict) -> str:
    lines = []
    base = baselines(res)
    c1 = dict(res.get("vault", {}).get("c1", {}))
    rows = [(r.name, r) for r in c1.values()]
    rows += [(r.name, r) for r in base.values()]
    for key in ("fsync_append", "loopback"):
        if key in res.get("floor", {}):
            rows.append((res["floor"][key].name, res["floor"][key]))
    for _, v in sorted(res.get("sizes", {}).items()):
        rows.append((v["guess"].name, v["guess"]))
    for _, v in sorted(res.get("growth", {}).items()):
        rows.append((v["guess"].name, v["guess"]))
    put = base.get("etcd put")
    head = _row_head("concurrency 1, via the leader (ms)")
    head += "".join(f" {'p50/' + k:>14}" for k in base)
    head += f" {'p99/etcd put':>14}" if put else ""
    lines += [head, "-" * len(head)]
    for name, r in rows:
        line = _row(name, r) + "".join(f" {_ratio(_pct(r, 50), _pct(b, 50)):>14}"
                                       for b in base.values())
        line += f" {_ratio(_pct(r, 99), _pct(put, 99)):>14}" if put else ""
        lines.append(line)
    for a, b, what in (("ke2_fake", "ke2_real", "fake KE2 / real KE2 (in process)"),
                       ("guess_unknown", "guess_enrolled_pair",
                        "unknown-user guess / enrolled (interleaved)"),
                       ("token_verify", "guess", "token check / guess")):
        if a in c1 and b in c1:
            lines.append(f"{what:42} p50 {_ratio(_pct(c1[a], 50), _pct(c1[b], 50))}, "
                         f"p99 {_ratio(_pct(c1[a], 99), _pct(c1[b], 99))}")
    via = [res.get(k, {}).get("via_follower", {}) for k in ("vault", "pysyncobj", "etcd")]
    via_rows = [r for d in via for r in d.values()]
    if via_rows:
        fput = res.get("etcd", {}).get("via_follower", {}).get("put")
        head = _row_head("concurrency 1, via a follower (ms)")
        head += f" {'p50/etcd put':>14} {'p99/etcd put':>14}" if fput else ""
        lines += ["", head, "-" * len(head)]
        for r in via_rows:
            line = _row(r.name, r)
            if fput:
                line += (f" {_ratio(_pct(r, 50), _pct(fput, 50)):>14}"
                         f" {_ratio(_pct(r, 99), _pct(fput, 99)):>14}")
            lines.append(line)
    curves = [("vault guess", res.get("vault", {}).get("curve", {})),
              ("raw pysyncobj increment", res.get("pysyncobj", {}).get("curve", {})),
              ("etcd CAS increment", res.get("etcd", {}).get("curve", {}))]
    lines += ["", f"{'throughput curve':26} {'conc':>5} {'max/s':>8} {'open/s':>8} "
                  f"{'p50':>7} {'p99':>7} {'p99.9':>7} {'err':>5}   (open loop at 80% of max, "
                  "ms from intended start)"]
    for name, curve in curves:
        for conc, ph in sorted(curve.items(), key=lambda kv: int(kv[0])):
            o = ph["open"]
            lines.append(f"{name:26} {int(conc):5d} {ph['closed'].throughput:8.0f} "
                         f"{o.throughput:8.0f} {_fmt(_pct(o, 50)):>7} {_fmt(_pct(o, 99)):>7} "
                         f"{_fmt(_pct(o, 99.9)):>7} {o.errors + ph['closed'].errors:5d}")
    tgt = res.get("vault", {}).get("target")
    if tgt is not None:
        lines.append(f"{'target check: ' + tgt.name:50} achieved {tgt.throughput:.0f}/s, p50 "
                     f"{_fmt(_pct(tgt, 50))} ms, p99 {_fmt(_pct(tgt, 99))} ms, errors {tgt.errors}")
        det = res.get("vault", {}).get("target_detail") or {}
        worst = det.get("slowest_second")
        if worst:
            compacted = ", ".join(det.get("compacted") or []) or "none"
            lines.append(f"{'':50} slowest second: p99 {worst['p99_ms']} ms "
                         f"at t={worst['second']} s; compacted during the check: {compacted}")
    g = res.get("growth", {})
    if g:
        lines += ["", f"{'records':>9} {'snapshot MB':>12} {'serialize s':>12} "
                      f"{'restart s':>10} {'RSS MB/node':>12} {'B/record':>9} {'guess p50':>10} "
                      f"{'live snap s':>12} {'guess p99':>10} {'guess max':>10} {'failed':>7}   "
                      "(last four: the leader snapshots, in a forked child, while guesses run)"]
        for n, v in sorted(g.items()):
            rss = v["rss_bytes_per_node"]
            comp = v.get("compaction") or {}
            lines.append(f"{n:9d} {v['snapshot_bytes'] / 1e6:12.1f} "
                         f"{v['snapshot_serialize_s']:12.2f} {v['restart_to_healthy_s']:10.2f} "
                         f"{(sum(rss.values()) / max(1, len(rss))) / 1e6:12.0f} "
                         f"{_fmt(v.get('memory_per_record_bytes')):>9} "
                         f"{_fmt(_pct(v['guess'], 50)):>10} "
                         f"{_fmt(comp.get('snapshot_and_compaction_s')):>12} "
                         f"{_fmt(_pct(comp.get('guess'), 99)):>10} "
                         f"{_fmt(comp.get('max_guess_ms')):>10} "
                         f"{comp['guess'].errors if comp.get('guess') else '-':>7}")
    for key, title, names, ratio in (
            ("mark", "durability mark A/B (guess)",
             {"with": "with the mark", "without": "without the mark"}, "with / without"),):
        ab = res.get(key)
        if not ab:
            continue
        (a, va), (_, vb) = list(ab.items())[:2]
        lines += ["", f"{title:30} {'p50':>7} {'p99':>7} "
                      f"{'c=' + str(va['concurrency']) + ' /s':>9}"]
        for t, v in ab.items():
            lines.append(f"{names[t]:30} {_fmt(_pct(v['c1'], 50)):>7} {_fmt(_pct(v['c1'], 99)):>7} "
                         f"{v['throughput']:9.0f}")
        lines.append(f"{ratio:30} {_ratio(_pct(va['c1'], 50), _pct(vb['c1'], 50)):>7} "
                     f"{_ratio(_pct(va['c1'], 99), _pct(vb['c1'], 99)):>7} "
                     f"{_ratio(va['throughput'], vb['throughput']):>9}")
    ns = res.get("netns")
    if ns and "skipped" in ns:
        lines += ["", f"namespace fleet A/B: not measured ({ns['skipped']})"]
    elif ns:
        a, b = ns["netns"], ns["loopback"]
        lines += ["", f"{'namespace fleet A/B (guess, c=1 via the leader)':48} {'n':>5} "
                      f"{'err':>4} {'p50':>7} {'p99':>7} {'c=' + str(a['concurrency']) + ' /s':>9}"]
        for name, v in (("own namespace per node (veth + bridge)", a),
                        ("loopback (127.0.0.1)", b)):
            r = v["c1"]
            lines.append(f"{name:48} {r.hist.get_total_count():5d} {r.errors:4d} "
                         f"{_fmt(_pct(r, 50)):>7} {_fmt(_pct(r, 99)):>7} {v['throughput']:9.0f}")
        lines.append(f"{'  netns / loopback':48} {'':5} {'':4} "
                     f"{_ratio(_pct(a['c1'], 50), _pct(b['c1'], 50)):>7} "
                     f"{_ratio(_pct(a['c1'], 99), _pct(b['c1'], 99)):>7} "
                     f"{_ratio(a['throughput'], b['throughput']):>9}")
    ch = res.get("channel")
    if ch:
        lines += ["", f"{'client channel A/B (guess, c=1, ms)':44} {'n':>5} {'err':>4} "
                      f"{'p50':>7} {'p99':>7}"]
        for mode, what in (("keepalive", "kept-alive connection"),
                           ("new_connection", "new connection per guess")):
            t, p = ch["tls"][mode], ch["plain"][mode]
            for name, r in (("TLS 1.3, pinned, " + what, t), ("plain HTTP, " + what, p)):
                lines.append(f"{name:44} {r.hist.get_total_count():5d} {r.errors:4d} "
                             f"{_fmt(_pct(r, 50)):>7} {_fmt(_pct(r, 99)):>7}")
            lines.append(f"{'  TLS / plain':44} {'':5} {'':4} "
                         f"{_ratio(_pct(t, 50), _pct(p, 50)):>7} "
                         f"{_ratio(_pct(t, 99), _pct(p, 99)):>7}")
    v = res.get("vault", {})
    if v.get("client_phases_ms"):
        lines += ["", "right-code recovery, median phases (ms): " +
                  ", ".join(f"{k} {val}" for k, val in v["client_phases_ms"].items())]
    if "unavailable" in res.get("etcd", {}):
        lines.append(f"etcd: not measured: {res['etcd']['unavailable']}")
    return "\n".join(lines)


def pictures(res: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    series = list(res.get("vault", {}).get("c1", {}).values()) + list(baselines(res).values())
    for r in series:
        pts = r.cdf()
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r.name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of operations")
    ax.set_title("Latency CDF at concurrency 1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    p = os.path.join(out, "latency_cdf.png")
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, key in (("vault guess", "vault"), ("raw pysyncobj", "pysyncobj"),
                      ("etcd CAS", "etcd")):
        curve = res.get(key, {}).get("curve", {})
        if not curve:
            continue
        items = sorted(curve.items(), key=lambda kv: int(kv[0]))
        tp = [ph["open"].throughput for _, ph in items]
        p50: list = [_pct(ph["open"], 50) for _, ph in items]  # None: a gap in the line
        p99: list = [_pct(ph["open"], 99) for _, ph in items]
        ax.plot(tp, p50, "o-", label=f"{name} p50")
        ax.plot(tp, p99, "s--", label=f"{name} p99")
        for (conc, ph), t in zip(items, tp, strict=True):
            ax.annotate(f"c{conc}", (t, _pct(ph["open"], 50)), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("throughput (operations/s, open loop at 80% of measured max)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Throughput vs latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    p = os.path.join(out, "throughput_latency.png")
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
