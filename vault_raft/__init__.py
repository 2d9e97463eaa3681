"""vault-raft: a guess-limited key vault whose records live in a Raft-replicated
state machine.

The public API, for app developers (see ``docs/api.md``)::

    from vault_raft import TrustedClient, WrongCode, Unavailable

    client = TrustedClient("client.json", token=my_token_source)
    client.enroll("alice", code, secret)
    try:
        secret = client.recover("alice", code).secret
    except WrongCode as exc:
        print(exc.attempts_left, "attempts left")

Everything here is a stable name; modules below are the implementation and
may move between releases (``ARCHITECTURE.md`` maps them).  Every error the
package raises on purpose derives from :class:`VaultRaftError` and carries the
exit code the ``vault-raft`` command line reports it with.

Names are imported on first use, so ``import vault_raft`` costs nothing and
the layers below never import this module's dependencies by accident.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    # clients
    "TrustedClient": "vault_raft.client",
    "ClientConfig": "vault_raft.client",
    "Client": "vault_raft.client",
    "Recovery": "vault_raft.client",
    "token_source": "vault_raft.client",
    # errors
    "VaultRaftError": "vault_raft.errors",
    "UsageError": "vault_raft.errors",
    "VaultError": "vault_raft.client",
    "WrongCode": "vault_raft.client",
    "NoRecord": "vault_raft.client",
    "Unavailable": "vault_raft.client",
    "ClockSkew": "vault_raft.client",
    "Untrusted": "vault_raft.client",
    "NotAuthorized": "vault_raft.client",
    "AlreadyEnrolled": "vault_raft.client",
    "InvalidInput": "vault_raft.client",
    "ServerError": "vault_raft.client",
    "TrustError": "vault_raft.trust.bundle",
    # limits a client may want to check input against
    "limits": "vault_raft.limits",
}

__all__ = [
    "__version__",
    "TrustedClient",
    "ClientConfig",
    "Client",
    "Recovery",
    "token_source",
    "VaultRaftError",
    "UsageError",
    "VaultError",
    "WrongCode",
    "NoRecord",
    "Unavailable",
    "ClockSkew",
    "Untrusted",
    "NotAuthorized",
    "AlreadyEnrolled",
    "InvalidInput",
    "ServerError",
    "TrustError",
    "limits",
]

if TYPE_CHECKING:
    from vault_raft import limits
    from vault_raft.client import (
        AlreadyEnrolled,
        Client,
        ClientConfig,
        ClockSkew,
        InvalidInput,
        NoRecord,
        NotAuthorized,
        Recovery,
        ServerError,
        TrustedClient,
        Unavailable,
        Untrusted,
        VaultError,
        WrongCode,
        token_source,
    )
    from vault_raft.errors import UsageError, VaultRaftError
    from vault_raft.trust.bundle import TrustError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vault_raft' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "limits" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
