"""The one base of every error vault-raft raises on purpose, and the exit
codes the command line maps them to.

Every exception class in the package derives from :class:`VaultRaftError`
(the few that also derive from a built-in, such as ``OSError`` for storage
failures, keep that too).  Each class carries the exit code the CLI returns
for it, so ``vault-raft`` maps an error to its code in one place
(``cli.main``) and a library user can catch ``VaultRaftError`` for anything
the package raises deliberately.  Anything else that escapes is a bug.

Exit codes are a contract that scripts rely on:

====  ======================================================================
0     success
1     any other error (a refusal by the fleet, a damaged file, a bug)
2     usage: bad flags, input or files given to the command
3     wrong recovery code (or a user with no record: the two look the same)
4     no such record, or the record was destroyed
5     unavailable: no majority reachable in time (nothing was revealed)
6     the fleet's signed bundle or a node's certificate did not verify:
      nothing was sent
7     the fleet refused the tenant token: nothing was proposed
====  ======================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_WRONG_CODE = 3
EXIT_NO_RECORD = 4
EXIT_UNAVAILABLE = 5
EXIT_UNTRUSTED = 6
EXIT_UNAUTHORIZED = 7


class VaultRaftError(Exception):
    """Base of every error the package raises on purpose."""

    exit_code: int = EXIT_ERROR


class UsageError(VaultRaftError):
    """Bad input to a command: flags, files, values.  Nothing was changed."""

    exit_code = EXIT_USAGE
