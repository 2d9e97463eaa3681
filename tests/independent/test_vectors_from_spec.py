"""The conformance vectors, checked by an implementation written from
docs/protocol.md alone (vaultspec.py, spec_checks.py), which imports no module of
this repository: checked here by reading its imports, and by running it in a
process in which ``vault_raft`` cannot be imported at all."""
import ast
import json
import pathlib
import subprocess
import sys

import pytest
import spec_checks

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VECTORS = ROOT / "docs" / "vectors" / "protocol-v1.json"
RFC9807 = ROOT / "tests" / "vectors" / "opaque-rfc9807-vectors.json"
ALLOWED = {"__future__", "base64", "hashlib", "hmac", "json", "sys", "msgpack", "rbcl",
           "cryptography", "vaultspec", "spec_checks"}


@pytest.fixture(scope="module")
def vec():
    return json.loads(VECTORS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rfc():
    return json.loads(RFC9807.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", spec_checks.CHECKS)
def test_vector(name, vec, rfc):
    getattr(spec_checks, name)(vec, rfc)


def test_the_independent_implementation_imports_nothing_of_this_repository():
    for path in (HERE / "vaultspec.py", HERE / "spec_checks.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module or ""]
            else:
                continue
            for n in names:
                assert n.split(".")[0] in ALLOWED, f"{path.name} imports {n}"


def test_the_checks_run_where_vault_raft_cannot_be_imported():
    code = ("import sys, runpy; sys.modules['vault_raft'] = None; "
            f"sys.path.insert(0, {str(HERE)!r}); sys.argv = ['spec_checks', {str(VECTORS)!r}, "
            f"{str(RFC9807)!r}]; runpy.run_path({str(HERE / 'spec_checks.py')!r}, "
            "run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") == len(spec_checks.CHECKS), r.stdout
    assert "vault_raft" not in r.stderr
