"""The `cluster` marker guard (tests/conftest.py): a test that starts node
processes without the marker fails before any process starts, so `make
test-fast` (``-m "not cluster and not slow"``) never needs a cluster."""
import pathlib
import sys

import pytest
from conftest import node_command

CONFTEST = pathlib.Path(__file__).with_name("conftest.py")

# Looks like a node start to the guard, and is a Python that does nothing.
FAKE_NODE = [sys.executable, "-c", "pass", "-m", "vault_raft", "node", "--dir", "x"]


@pytest.mark.parametrize("argv, what", [
    ([sys.executable, "-m", "vault_raft", "node", "--dir", "n1"], "vault-raft node"),
    (["vault-raft", "cluster", "start", "f"], "vault-raft cluster"),
    ([sys.executable, "-m", "vault_raft", "--quiet", "demo"], "vault-raft demo"),
    ([sys.executable, "-m", "vault_raft", "bench", "--out", "b"], "vault-raft bench"),
    ([sys.executable, "-m", "vault_raft", "chaos", "--seed", "1"], "vault-raft chaos"),
    ([sys.executable, "-m", "vault_raft", "witness", "serve", "--dir", "w"],
     "vault-raft witness serve"),
    ([sys.executable, "tests/bugs/buggy_node.py", "--bug", "x", "--dir", "n1"],
     "a test node (buggy_node.py)"),
    ("/venv/bin/vault-raft node --dir n1", "vault-raft node"),
    ([sys.executable, "-m", "vault_raft", "fleet", "init", "d"], None),
    ([sys.executable, "-m", "vault_raft", "witness", "init", "--dir", "w"], None),
    ([sys.executable, "-m", "vault_raft", "simulate", "--seed", "3"], None),
    ([sys.executable, "-c", "print('node')"], None),
    (["promtool", "check", "rules", "alerts.yml"], None),
])
def test_which_commands_start_nodes(argv, what):
    assert node_command(argv) == what


INNER = f"""
import subprocess

import pytest

from vault_raft.ops.cluster import LocalCluster

FAKE_NODE = {FAKE_NODE!r}


def test_unmarked_popen_of_a_node():
    subprocess.run(FAKE_NODE, check=True)


def test_unmarked_local_cluster_start():
    LocalCluster.start(None)


@pytest.fixture(scope="module")
def node_for_the_module():
    subprocess.run(FAKE_NODE, check=True)


def test_unmarked_module_fixture_starting_a_node(node_for_the_module):
    pass


@pytest.mark.cluster
def test_marked_popen_of_a_node():
    subprocess.run(FAKE_NODE, check=True)


def test_unmarked_other_commands_run():
    subprocess.run(FAKE_NODE[:3], check=True)
"""


def test_an_unmarked_test_that_starts_nodes_fails(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    cluster: starts node processes\n")
    pytester.makepyfile(test_inner=INNER)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rfE")
    res.assert_outcomes(passed=2, failed=2, errors=1)
    out = res.stdout.str()
    for name, what in [("test_unmarked_popen_of_a_node", "vault-raft node"),
                       ("test_unmarked_local_cluster_start",
                        "node processes (LocalCluster.start)"),
                       ("test_unmarked_module_fixture_starting_a_node", "vault-raft node")]:
        assert f"test_inner.py::{name} starts {what} but is not marked @pytest.mark.cluster" \
            in out, out
