"""One error base: every exception class the package defines derives from
VaultRaftError and carries one of the documented exit codes."""

from __future__ import annotations

import errno
import importlib
import inspect
import pathlib

import pytest

from vault_raft import errors

ROOT = pathlib.Path(__file__).resolve().parent.parent / "vault_raft"
DOCUMENTED = {getattr(errors, n) for n in dir(errors) if n.startswith("EXIT_")}


def _classes():
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        mod = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for _, c in inspect.getmembers(mod, inspect.isclass):
            if c.__module__ == mod.__name__ and issubclass(c, BaseException):
                out.append(c)
    return out


CLASSES = _classes()


def test_there_are_many():
    assert len(CLASSES) > 40


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_derives_from_the_base(cls):
    assert issubclass(cls, errors.VaultRaftError)
    assert cls.exit_code in DOCUMENTED


def test_the_exit_codes_are_the_cli_contract():
    from vault_raft.client import errors as C
    from vault_raft.fleet.config import ConfigError
    from vault_raft.trust.bundle import NotInLog

    assert (C.WrongCode.exit_code, C.NoRecord.exit_code, C.Unavailable.exit_code,
            C.Untrusted.exit_code, C.NotAuthorized.exit_code) == (3, 4, 5, 6, 7)
    assert ConfigError.exit_code == errors.EXIT_USAGE == 2
    assert NotInLog.exit_code == errors.EXIT_UNTRUSTED


def test_an_oserror_subclass_keeps_its_meaning():
    from vault_raft.storage.errors import StorageFailed

    e = StorageFailed(errno.ENOSPC, "no space")
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
