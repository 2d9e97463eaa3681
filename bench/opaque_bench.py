#!/usr/bin/env python3
"""OPAQUE cost on this machine: server KE2, server finish, client work.

Reports median and p99 over many runs (a report, not a test):

    .venv/bin/python bench/opaque_bench.py [--runs 300] [--client-runs 30] [--json out.json]

* server KE2     = server_login_start (OPRF evaluation, masking, 3DH, MACs)
* server finish  = server_login_finish (one constant-time MAC compare)
* client login   = ClientLogin.start + finish, with the default Argon2id
                   (m=19456 KiB, t=2, p=1): dominated by the KSF
* argon2id alone = the KSF by itself, for reference
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vault_raft.crypto import opaque as O  # noqa: E402
from vault_raft.crypto.ksf import DEFAULT_KSF  # noqa: E402


def _stats(samples):
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return {"n": len(s), "median_ms": statistics.median(s) * 1e3, "p99_ms": p99 * 1e3}


def run(runs: int = 300, client_runs: int = 30) -> dict:
    setup = O.ServerSetup.generate()
    pw, uid = b"a recovery code", b"bench-user"
    reg, req = O.ClientRegistration.start(pw)
    record = reg.finish(O.server_registration_response(setup, req, uid)).record
    ke2_t, fin_t, client_t, ksf_t = [], [], [], []
    for i in range(runs):
        login, ke1 = O.ClientLogin.start(pw)
        t0 = time.perf_counter()
        state, ke2 = O.server_login_start(setup, record, ke1, uid)
        ke2_t.append(time.perf_counter() - t0)
        if i < client_runs:
            t0 = time.perf_counter()
            login2, ke1b = O.ClientLogin.start(pw)
            state, ke2 = O.server_login_start(setup, record, ke1b, uid)
            t_server = time.perf_counter()
            out = login2.finish(ke2)
            t1 = time.perf_counter()
            client_t.append(t1 - t_server)
            t0 = time.perf_counter()
            DEFAULT_KSF.stretch(b"x" * 64)
            ksf_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            O.server_login_finish(state, out.ke3)
            fin_t.append(time.perf_counter() - t0)
    return {
        "server_ke2": _stats(ke2_t),
        "server_finish": _stats(fin_t),
        "client_finish_argon2id_default": _stats(client_t),
        "argon2id_default_alone": _stats(ksf_t),
        "ksf": DEFAULT_KSF.to_dict(),
        "cpus": os.cpu_count(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--client-runs", type=int, default=30)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.client_runs < 1:
        ap.error("--runs and --client-runs must be >= 1")
    res = run(a.runs, min(a.client_runs, a.runs))
    print(f"{'operation':34} {'n':>5} {'median ms':>10} {'p99 ms':>10}")
    for k, v in res.items():
        if isinstance(v, dict) and "median_ms" in v:
            print(f"{k:34} {v['n']:5d} {v['median_ms']:10.3f} {v['p99_ms']:10.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
