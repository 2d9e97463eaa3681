"""The client's errors: every one carries the CLI exit code that reports it::

    VaultError (1) > WrongCode (3), NoRecord (4), Unavailable (5) > ClockSkew (5),
                     Untrusted (6), NotAuthorized (7), AlreadyEnrolled (1), InvalidInput (2),
                     ServerError (1)
"""

from __future__ import annotations

from vault_raft.errors import (
    EXIT_ERROR,
    EXIT_NO_RECORD,
    EXIT_UNAUTHORIZED,
    EXIT_UNAVAILABLE,
    EXIT_UNTRUSTED,
    EXIT_USAGE,
    EXIT_WRONG_CODE,
    VaultRaftError,
)
from vault_raft.trust import bundle as B


class VaultError(VaultRaftError):
    """Base of the client's errors."""


class InvalidInput(VaultError):
    exit_code = EXIT_USAGE


class WrongCode(VaultError):
    """The recovery code was wrong (or the user is not enrolled: by design
    the two cannot be told apart).  ``attempts_left`` says how many remain."""
    exit_code = EXIT_WRONG_CODE

    def __init__(self, attempts_left: int):
        super().__init__(f"wrong recovery code; {attempts_left} attempt"
                         f"{'' if attempts_left == 1 else 's'} left")
        self.attempts_left = attempts_left


class NoRecord(VaultError):
    exit_code = EXIT_NO_RECORD


class Unavailable(VaultError):
    exit_code = EXIT_UNAVAILABLE


class ClockSkew(Unavailable):
    """Nodes refused requests as late that were sent just now: this machine's
    clock and the fleet's disagree, and learning the offset did not help."""


class AlreadyEnrolled(VaultError):
    exit_code = EXIT_ERROR


class ServerError(VaultError):
    exit_code = EXIT_ERROR


class NotAuthorized(VaultError):
    """The fleet refused the tenant token (missing, expired, for another user
    or fleet); nothing was proposed."""
    exit_code = EXIT_UNAUTHORIZED


class Untrusted(VaultError):
    """The fleet could not be authenticated through its signed bundle, or a
    node through the channel key the fleet pins; nothing derived from the
    recovery code was sent.  ``reason`` is the specific
    :class:`~vault_raft.trust.bundle.TrustError` subclass."""
    exit_code = EXIT_UNTRUSTED

    def __init__(self, message: str, reason: type = B.TrustError):
        super().__init__(message)
        self.reason = reason


