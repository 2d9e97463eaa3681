"""The Python client: enroll, recover, change and delete, with typed errors.

The recovery code never leaves this process: it is the OPAQUE password.

:class:`TrustedClient` (:mod:`.trusted`) is what end users run: configured
with ``client.json`` (a namespace, the operator's and the witness's public
keys, bootstrap endpoints) and a small state file, it fetches the fleet's
signed bundle from a node and verifies it (:func:`vault_raft.trust.bundle.verify`)
*before* it sends anything derived from the recovery code; it follows
rotations to a new fleet (see ``docs/trust.md``).  :class:`Client`
(:mod:`.fleet`) talks to one fleet whose keys it is given (``fleet.json``
pins them: the operator's own tools use it).  Both OPAQUE flows pin the
server key, so a node holding other keys is refused.

Every exception carries the CLI exit code that reports it (:mod:`.errors`).
"""

from vault_raft.client.errors import (
    AlreadyEnrolled,
    ClockSkew,
    InvalidInput,
    NoRecord,
    NotAuthorized,
    ServerError,
    Unavailable,
    Untrusted,
    VaultError,
    WrongCode,
)
from vault_raft.client.fleet import Client, Recovery, TokenSource, token_source
from vault_raft.client.trusted import ClientConfig, TrustedClient, default_state_path

__all__ = [
    "AlreadyEnrolled", "ClockSkew", "InvalidInput", "NoRecord", "NotAuthorized", "ServerError",
    "Unavailable", "Untrusted", "VaultError", "WrongCode",
    "Client", "Recovery", "TokenSource", "token_source",
    "ClientConfig", "TrustedClient", "default_state_path",
]
