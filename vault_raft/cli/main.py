"""vault-raft: a guess-limited key vault whose records live in a Raft cluster.

exit codes (a contract; scripts may rely on them):
  0 success    3 wrong recovery code    4 no such record / destroyed
  5 unavailable (no majority reachable in time)
  6 the fleet's signed bundle did not verify, or a node is not the pinned
    fleet's (its TLS certificate): nothing was sent
  7 the fleet refused the tenant token (missing, expired, for another user
    or fleet): nothing was proposed
  2 usage    1 anything else

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

from vault_raft import client as C
from vault_raft.cli import bench as benchcli
from vault_raft.cli import chaos as chaoscli
from vault_raft.cli import cluster as clustercli
from vault_raft.cli import fleet as fleetcli
from vault_raft.cli import sim as simcli
from vault_raft.cli import trust as trustcli
from vault_raft.cli import vault as vaultcli
from vault_raft.cli.trust import TrustCommandError
from vault_raft.errors import UsageError
from vault_raft.fleet.config import ConfigError
from vault_raft.fleet.keystore import KeystoreError
from vault_raft.fleet.operator import OperatorError
from vault_raft.ops.cluster import ClusterError
from vault_raft.ops.witness_server import WitnessConfigError
from vault_raft.storage.errors import JournalCorrupt
from vault_raft.trust.bundle import TrustError
from vault_raft.trust.witness import WitnessLogCorrupt

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_WRONG, EXIT_NORECORD, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5


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


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except UsageError as exc:
        print(f"vault-raft: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except C.WrongCode as exc:
        print(f"vault-raft: {exc}", file=sys.stderr)
        return EXIT_WRONG
    except C.VaultError as exc:
        print(f"vault-raft: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ConfigError, KeystoreError) as exc:
        print(f"vault-raft: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrustError as exc:
        print(f"vault-raft: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return C.Untrusted.exit_code
    except (OperatorError, WitnessConfigError, TrustCommandError, WitnessLogCorrupt) as exc:
        print(f"vault-raft: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (ClusterError, JournalCorrupt) as exc:
        print(f"vault-raft: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vault-raft: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback unless asked for
        if os.environ.get("VAULT_RAFT_DEBUG"):
            raise
        print(f"vault-raft: internal error: {exc.__class__.__name__}: {exc} "
              "(set VAULT_RAFT_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
