"""The public API in vault_raft/__init__.py: every name resolves, importing
the package imports nothing else, and the errors are the documented ones."""

from __future__ import annotations

import subprocess
import sys

import vault_raft


def test_all_is_the_export_table():
    assert vault_raft.__all__ == ["__version__", *vault_raft._EXPORTS]


def test_every_public_name_resolves():
    for name in vault_raft.__all__:
        assert getattr(vault_raft, name) is not None, name


def test_errors_share_the_base():
    assert issubclass(vault_raft.WrongCode, vault_raft.VaultRaftError)
    assert issubclass(vault_raft.TrustError, vault_raft.VaultRaftError)
    assert vault_raft.WrongCode.exit_code == 3


def test_unknown_names_are_attribute_errors():
    try:
        vault_raft.no_such_name  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_the_package_is_free():
    code = ("import sys, vault_raft; "
            "print(sorted(m for m in sys.modules if m.startswith('vault_raft.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"


def test_version_is_the_packages():
    from importlib.metadata import version

    assert vault_raft.__version__ == version("vault-raft")
