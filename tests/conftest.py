import contextlib
import json
import os
import pathlib
import random
import shlex
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

from vault_raft.fleet.create import init_fleet
from vault_raft.ops.cluster import LocalCluster
from vault_raft.ops.cluster import free_base_port as _free_base_port

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Profiles: "ci" (default, bounded) and "long" (VAULT_RAFT_PROFILE=long).
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("VAULT_RAFT_PROFILE", "ci"))

pytest_plugins = ["pytester"]  # tests/test_markers.py runs the marker guard in a child pytest


# ------------------------------------------------- the `cluster` marker guard
# A test that starts node processes (or a command that does) must be marked
# `cluster`: `make test-fast` deselects those and needs no clusters.  An
# unmarked test that tries fails at the start, before any process exists.
NODE_SUBCOMMANDS = {"node", "cluster", "demo", "bench", "chaos"}


def node_command(args) -> str | None:
    """Why ``args`` (a Popen argument) starts node processes, or None."""
    if isinstance(args, (str, bytes, os.PathLike)):
        argv = shlex.split(os.fsdecode(args))
    else:
        argv = [os.fsdecode(a) for a in args]
    for i, a in enumerate(argv):
        base = os.path.basename(a)
        if base.endswith("_node.py"):
            return f"a test node ({base})"
        if (a == "vault_raft" and i > 0 and argv[i - 1] == "-m") or base == "vault-raft":
            words = [w for w in argv[i + 1:] if not w.startswith("-")]
            if words and words[0] in NODE_SUBCOMMANDS:
                return f"vault-raft {words[0]}"
            if words[:2] == ["witness", "serve"]:
                return "vault-raft witness serve"
    return None


@contextlib.contextmanager
def _cluster_marker_guard(item):
    """While ``item`` (a test without the marker) sets up, runs and tears down,
    including fixtures of wider scope that its set-up creates."""
    if item.get_closest_marker("cluster") is not None:
        yield
        return

    def refuse(what: str):
        pytest.fail(f"{item.nodeid} starts {what} but is not marked @pytest.mark.cluster",
                    pytrace=False)

    class GuardedPopen(subprocess.Popen):
        def __init__(self, args, *a, **kw):
            what = node_command(args)
            if what:
                refuse(what)
            super().__init__(args, *a, **kw)

    def guarded_start(self, ids=None):
        refuse("node processes (LocalCluster.start)")

    popen, start = subprocess.Popen, LocalCluster.start
    setattr(subprocess, "Popen", GuardedPopen)  # noqa: B010 -- mypy: assigning a class
    setattr(LocalCluster, "start", guarded_start)  # noqa: B010 -- mypy: assigning a method
    try:
        yield
    finally:
        setattr(subprocess, "Popen", popen)  # noqa: B010
        setattr(LocalCluster, "start", start)  # noqa: B010


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _cluster_marker_guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _cluster_marker_guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    with _cluster_marker_guard(item):
        yield


# ------------------------------------------------------------ real clusters


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
    made: list[LocalCluster] = []

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


@pytest.fixture
def witness(tmp_path):
    """A witness process on a free port: (url, its directory, the process);
    stopped by PID at teardown."""
    from vault_raft.ops import witness_server

    d = str(tmp_path / "witness")
    port = free_base_port(1) + 1
    r = vault_cli("witness", "init", "--dir", d, "--port", str(port))
    assert r.returncode == 0, r.stderr
    proc = witness_server.spawn(d)
    try:
        yield f"http://127.0.0.1:{port}", d, proc
    finally:
        witness_server.stop(proc)


def fast_ksf(fleet_dir: str) -> None:
    """The identity KSF in fleet.json: for tests about trust or membership,
    not about Argon2id's cost."""
    from vault_raft.crypto.ksf import IDENTITY_KSF

    p = os.path.join(fleet_dir, "fleet.json")
    with open(p) as f:
        d = json.load(f)
    d["ksf"] = IDENTITY_KSF.to_dict()
    with open(p, "w") as f:
        json.dump(d, f)
