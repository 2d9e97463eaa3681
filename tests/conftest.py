import os
import pathlib

import pytest
from hypothesis import HealthCheck, settings

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Profiles: "ci" (default, bounded) and "long" (VAULT_RAFT_PROFILE=long).
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("VAULT_RAFT_PROFILE", "ci"))


# ------------------------------------------------------------ real clusters
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

from vault_raft.fleet.create import init_fleet  # noqa: E402
from vault_raft.ops.cluster import LocalCluster  # noqa: E402
from vault_raft.ops.cluster import free_base_port as _free_base_port  # noqa: E402


def free_base_port(nodes: int) -> int:
    """Random, so that parallel or successive test runs do not collide."""
    return _free_base_port(nodes, start=20000, stop=40000, step=10, rng=random.Random())


def make_fleet(tmp_path, nodes=3, raft=None, max_attempts=10):
    d = str(tmp_path / "fleet")
    init_fleet(d, nodes, base_port=free_base_port(nodes), max_attempts=max_attempts)
    if raft:
        for i in range(1, nodes + 1):
            p = os.path.join(d, f"n{i}", "node.json")
            cfg = json.loads(open(p).read())
            cfg["raft"] = raft
            open(p, "w").write(json.dumps(cfg))
    return d


@pytest.fixture
def cluster_factory(tmp_path):
    """Start real node processes; always stopped (by PID) at teardown."""
    made = []

    def factory(nodes=3, raft=None, node_cmd=None, env=None, start=True, max_attempts=10):
        d = make_fleet(tmp_path / f"c{len(made)}", nodes, raft, max_attempts)
        cl = LocalCluster(d, node_cmd=node_cmd, env=env)
        made.append(cl)
        if start:
            cl.start()
            cl.wait_leader(30)
            cl.wait_healthy(timeout=30)
        return cl

    yield factory
    for cl in made:
        cl.stop(timeout=5)
        leftover = [n for n in cl.ids if cl.pid(n)]
        assert not leftover, f"node processes left running: {leftover}"


def vault_cli(*args, env=None, stdin=None, timeout=60):
    import subprocess
    e = dict(os.environ)
    e.pop("VAULT_RECOVERY_CODE", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "vault_raft", *args], input=stdin,
                          capture_output=True, text=True, env=e, timeout=timeout)


def app_tenant(fleet_dirs, namespace, name="app"):
    """Register one app tenant (one key) on every fleet of a namespace; returns
    its token source (user -> token), as the app's server would mint them."""
    from vault_raft.fleet import tenants as T
    from vault_raft.fleet.keystore import load_signing_key
    first, *others = fleet_dirs
    key = T.add_tenant(first, name, audiences=(namespace,))
    pk = load_signing_key(key).public_key().public_bytes_raw()
    for d in others:
        T.add_tenant(d, name, audiences=(namespace,), public_key=pk)
    return T.local_token_source(first, namespace, name)
