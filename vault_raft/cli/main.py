"""vault-raft: a guess-limited key vault whose records live in a Raft cluster.

exit codes (a contract; scripts may rely on them):
  0 success    3 wrong recovery code    4 no such record / destroyed
  5 unavailable (no majority reachable in time)
  6 the fleet's signed bundle did not verify, or a node is not the pinned
    fleet's (its TLS certificate): nothing was sent
  7 the fleet refused the tenant token (missing, expired, for another user
    or fleet): nothing was proposed
  2 usage    1 anything else    130 interrupted
  (each error class carries its code: vault_raft/errors.py)

Users' commands trust the fleet through --client client.json (the operator's and
witness's public keys; the fleet's keys come from a verified, witnessed bundle).
--fleet fleet.json pins a fleet's keys instead: for the operator's own tools.

User commands send a tenant token (--token, else VAULT_TOKEN); with --fleet and
no token, the fleet directory's "local" tenant key mints one.

Recovery codes are read from VAULT_RECOVERY_CODE, else from standard input
(one per line), else from a prompt -- never from the command line, where
other users of the machine could read them.
"""

from __future__ import annotations

import argparse
import os
import sys

from vault_raft.cli import bench as benchcli
from vault_raft.cli import chaos as chaoscli
from vault_raft.cli import cluster as clustercli
from vault_raft.cli import fleet as fleetcli
from vault_raft.cli import sim as simcli
from vault_raft.cli import trust as trustcli
from vault_raft.cli import vault as vaultcli
from vault_raft.errors import EXIT_ERROR, VaultRaftError
from vault_raft.trust.bundle import TrustError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vault-raft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    fsub = fleetcli.register(sub)
    trustcli.register(sub, fsub)
    fleetcli.register_tenant(sub)
    clustercli.register(sub)
    vaultcli.register(sub)
    clustercli.register_demo(sub)
    benchcli.register(sub)
    chaoscli.register(sub)
    simcli.register(sub)
    return ap


def _fail(message: str, code: int) -> int:
    print(f"vault-raft: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one command; every deliberate error is one line on stderr and the
    exit code its class carries (:mod:`vault_raft.errors`), never a traceback."""
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except TrustError as exc:  # which check refused is part of the message
        return _fail(f"{exc.__class__.__name__}: {exc}", exc.exit_code)
    except VaultRaftError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # a bug: still no traceback unless asked for
        if os.environ.get("VAULT_RAFT_DEBUG"):
            raise
        return _fail(f"internal error: {exc.__class__.__name__}: {exc} "
                     "(set VAULT_RAFT_DEBUG=1 for details)", EXIT_ERROR)

if __name__ == "__main__":
    sys.exit(main())
