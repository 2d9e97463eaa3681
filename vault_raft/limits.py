"""Every size and count limit that more than one layer checks, in one place.

The state machine, the node's request checks, the client, the CLI, the
OpenAPI document and the fleet files all take their bounds from here, and
``tests/test_limits.py`` checks these against the lengths the crypto layer
produces.  Limits that belong to one module only stay in that module.

Changing a value here changes the meaning of an existing log where the state
machine checks it (``core.machine``): such a change needs a new command
format, like any other change to the replicated rules.
"""

from __future__ import annotations

#: A user id as a client sends it, in bytes.
USER_ID_MAX = 256
#: A tenant id: lowercase letters, digits and ``-``, starting with a letter or digit.
TENANT_ID_MAX = 32
#: A record key in the state machine: ``tenant || 0x00 || user id``, or a
#: bare user id for the fleet's own tenant.  The replicated bound is 320
#: (room above ``TENANT_ID_MAX + 1 + USER_ID_MAX`` = 289); it is part of the
#: log's meaning, so it stays 320 even if the parts it bounds shrink.
RECORD_KEY_MAX = 320
#: The secret a user stores (before sealing), in bytes.
SECRET_MAX = 4096
#: A recovery code, in bytes (UTF-8 on the command line).
CODE_MAX = 4096
#: ``max_attempts`` of a record: 1..MAX_ATTEMPTS_LIMIT.
MAX_ATTEMPTS_LIMIT = 100
#: ``max_attempts`` when enrollment does not say.
DEFAULT_MAX_ATTEMPTS = 10
#: An OPAQUE registration record (RFC 9807, ristretto255-SHA512):
#: client public key (32) || masking key (64) || envelope (nonce 32 + MAC 64).
OPAQUE_RECORD_LEN = 192
#: A sealed secret at rest (the secret plus the seal's nonce, tag and header).
SEALED_MAX = 8192
