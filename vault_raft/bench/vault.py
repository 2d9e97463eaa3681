"""The vault's own measurements: guesses, enrollments and recoveries at
concurrency 1 (through the leader and through a follower), the load curve,
the target check, and the in-process costs beside them (KE2, token check)."""

from __future__ import annotations

import itertools
import os
import time

from vault_raft.bench.harness import ATTEMPTS_PER_BENCH_USER, Config, VaultBench, progress
from vault_raft.bench.load import (
    Result,
    closed_loop,
    open_loop,
    slowest_second,
    timed,
    timed_interleaved,
)
from vault_raft.core import machine as M
from vault_raft.crypto import opaque
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.fleet.config import NodeConfig
from vault_raft.fleet.tenant_gate import Gate


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
        progress(cfg, f"vault: starting a {cfg.nodes}-node cluster")
        vb.start()
        # the warm-up (4 workers, up to 2 s) guesses too: without it a fast short
        # run used every user up and its last phases (the target check) only failed
        n_guess_users = max(20, int((len(cfg.concurrency) * cfg.duration
                                     + min(2.0, cfg.duration)) * 1500
                                    / (ATTEMPTS_PER_BENCH_USER - 5)) + cfg.samples // 50)
        progress(cfg, f"vault: enrolling {n_guess_users} guess users and 4 recovering users")
        vb.prepare(n_guess_users, 4)
        progress(cfg, "vault: warm-up")
        closed_loop("warmup", vb.guess_op, 4, min(2.0, cfg.duration))
        lead, follower = vb.entry_points()
        c = vb.conn(lead)
        out: dict = {"c1": {}, "curve": {}, "via_follower": {}}
        if "guess" in cfg.workloads:
            progress(cfg, f"vault: {cfg.samples} guesses at concurrency 1, through the leader "
                           "and through a follower")
            out["c1"]["guess"] = timed(cfg.samples, vb.guess_op(lead), "vault guess commit")
            out["via_follower"]["guess"] = timed(cfg.samples, vb.guess_op(follower),
                                                 "vault guess commit")
            progress(cfg, f"vault: {cfg.samples} guesses for unknown users (fake KE2), and "
                           "KE2 computed in process for an enrolled and an unknown user")
            pair = timed_interleaved(cfg.samples, {
                "vault guess commit, enrolled user (interleaved)": vb.guess_op(lead),
                "vault guess commit, unknown user (interleaved)": vb.unknown_guess_op(lead)})
            out["c1"]["guess_enrolled_pair"], out["c1"]["guess_unknown"] = pair.values()
            out["c1"]["ke2_real"], out["c1"]["ke2_fake"] = ke2_costs(cfg.samples * 4)
            out["c1"]["token_verify"] = token_cost(vb, cfg.samples * 4)
        if "enroll" in cfg.workloads:
            progress(cfg, f"vault: {cfg.samples // 2} enrollments at concurrency 1")
            seq = itertools.count()
            out["c1"]["enroll"] = timed(cfg.samples // 2, lambda: vb.enroll_one(
                c, f"e{next(seq)}".encode(), vb.template_record), "vault enroll commit")
        if "release" in cfg.workloads or "full_recovery" in cfg.workloads:
            n = max(10, cfg.samples // 6)
            progress(cfg, f"vault: {n} right-code recoveries (client Argon2id included)")
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
            progress(cfg, f"vault: {n} right-code recoveries, client Argon2id remembered")
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
                progress(cfg, f"vault: guesses at concurrency {conc}: closed loop "
                               f"{cfg.duration / 2:.1f}s, then open loop at "
                               f"{int(cfg.open_fraction * 100)}% of it")
                cl = closed_loop("vault guess", vb.guess_op, conc, cfg.duration / 2)
                rate = max(1.0, cl.throughput * cfg.open_fraction)
                ol = open_loop("vault guess", vb.guess_op, conc, rate, cfg.duration / 2)
                out["curve"][conc] = {"closed": cl, "open": ol}
                s = ol.summary()
                progress(cfg, f"   {cl.throughput:.0f}/s max; at {rate:.0f}/s p50 "
                               f"{s.get('p50_ms')} ms p99 {s.get('p99_ms')} ms")
        if "guess" in cfg.workloads and cfg.target_rate:
            conc = max(cfg.concurrency)
            progress(cfg, f"vault: target check, open loop at {cfg.target_rate:.0f} guesses/s, "
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
