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
import getpass
import logging
import os
import sys

from vault_raft import client as C
from vault_raft import limits
from vault_raft.cli.trust import TrustCommandError
from vault_raft.errors import UsageError
from vault_raft.fleet import tenants as T
from vault_raft.fleet.config import ConfigError, FleetInfo
from vault_raft.fleet.create import init_fleet, load_spec
from vault_raft.fleet.export import export_node
from vault_raft.fleet.keystore import KeystoreError
from vault_raft.fleet.operator import OperatorError
from vault_raft.ops.cluster import ClusterError, LocalCluster
from vault_raft.ops.witness_server import WitnessConfigError
from vault_raft.storage.errors import JournalCorrupt
from vault_raft.storage.files import atomic_write
from vault_raft.trust.bundle import TrustError
from vault_raft.trust.witness import WitnessLogCorrupt

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_WRONG, EXIT_NORECORD, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5


# ------------------------------------------------------------ secrets input

class _Codes:
    """Recovery codes from the environment, stdin lines, or a prompt."""

    def __init__(self):
        self._stdin_lines: list[str] | None = None

    def get(self, env: str, prompt: str, index: int) -> bytes:
        value = os.environ.get(env)
        if value is None:
            if sys.stdin is not None and not sys.stdin.isatty():
                if self._stdin_lines is None:
                    self._stdin_lines = sys.stdin.read().splitlines()
                if index >= len(self._stdin_lines):
                    raise UsageError(f"expected a recovery code on line {index + 1} of stdin "
                                     f"(or set {env})")
                value = self._stdin_lines[index]
            else:
                value = getpass.getpass(prompt)
        code = value.rstrip("\r\n")
        if not code:
            raise UsageError("the recovery code is empty")
        if len(code.encode()) > limits.CODE_MAX:
            raise UsageError(f"the recovery code is longer than {limits.CODE_MAX} bytes")
        return code.encode()


def _read_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limits.SECRET_MAX + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --secret-file {path}: {exc.strerror}") from None
    if not 1 <= len(data) <= limits.SECRET_MAX:
        raise UsageError(f"the secret file must hold 1..{limits.SECRET_MAX} bytes")
    return data


def _write_secret(path: str, data: bytes, force: bool) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; use --force to overwrite")
    atomic_write(path, data)


# ---------------------------------------------------------------- commands

def _node_hosts(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        nid, sep, host = pair.partition("=")
        if not sep or not nid or not host:
            raise UsageError(f"--node-host takes nK=HOST, got {pair!r}")
        if nid in out:
            raise UsageError(f"--node-host {nid} given twice")
        out[nid] = host
    return out


def cmd_fleet_init(a) -> int:
    spec = load_spec(a.spec) if a.spec else None
    path = init_fleet(a.dir, a.nodes, a.host, a.base_port, a.max_attempts,
                      api_tls=not a.insecure_http, node_hosts=_node_hosts(a.node_host),
                      bind=a.bind, spec=spec)
    print(f"fleet created: {path}")
    if a.insecure_http:
        print("warning: the nodes' API is PLAIN HTTP (--insecure-http): user ids, OPAQUE "
              "messages and counters cross the network unencrypted; for local debugging only",
              file=sys.stderr)
    print(f"start it with: vault-raft cluster up --dir {a.dir}")
    return 0


def cmd_fleet_export(a) -> int:
    names = export_node(a.dir, a.node, a.out)
    print(f"{a.node}: wrote {', '.join(names)} to {a.out} (directory 0700, files 0600); "
          f"on its host run: vault-raft node --dir <the directory>", file=sys.stderr)
    return 0


def cmd_fleet_replace(a) -> int:
    from vault_raft.ops.replace import Unavailable, replace_node
    try:
        rep = replace_node(a.dir, a.node, a.host, raft_port=a.raft_port, api_port=a.api_port,
                           bind=a.bind, operator_dir=a.operator, start=not a.no_start,
                           timeout=a.timeout, progress=lambda m: print(m, file=sys.stderr))
    except Unavailable as exc:
        print(f"vault-raft: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"{rep.node_id} replaced: {rep.old_addr} -> {rep.new_addr}", file=sys.stderr)
    return 0


def cmd_tenant_init(a) -> int:
    limits = {k: getattr(a, k) for k in T.DEFAULT_LIMITS}
    if any(v < 0 for v in limits.values()):
        raise UsageError("rates and bursts must be >= 0")
    try:
        pk = bytes.fromhex(a.public_key) if a.public_key else None
        key = T.add_tenant(a.fleet_dir, a.name, audiences=tuple(a.audience), limits=limits,
                           public_key=pk, bare_ids=a.bare_ids)
    except ValueError:
        raise UsageError("--public-key must be hex") from None
    except (T.TenantError, ConfigError, KeystoreError) as exc:
        raise UsageError(str(exc)) from None
    where = f"signing key {key} (give it to the tenant's server; keep it secret)" if key \
        else "its existing key registered"
    print(f"tenant {a.name}: {where}; the signed tenant list is in the fleet and node "
          "directories (copy tenants.bin to nodes on other machines)")
    return 0


def cmd_tenant_token(a) -> int:
    from vault_raft.fleet.keystore import load_signing_key
    try:
        fleet = FleetInfo.load(os.path.join(a.fleet_dir, "fleet.json"))
        sk = load_signing_key(T.tenant_key_path(a.fleet_dir, a.name), f"tenant key {a.name}")
        print(T.mint(a.name, sk, a.user.encode(), a.audience or fleet.fleet_id, a.lifetime))
    except (ConfigError, KeystoreError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_node(a) -> int:
    from vault_raft.node.main import run_node
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_node(a.dir)


def cmd_cluster(a) -> int:
    cl = LocalCluster(a.dir)
    if a.action == "up":
        started = cl.start()
        print(f"started {', '.join(started) or 'nothing (all running)'}", file=sys.stderr)
        try:
            leader = cl.wait_leader(a.timeout)
        except ClusterError as exc:
            print(cl.table())
            print(f"error: {exc}; see {cl.dir}/n*/node.log", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"leader: {leader}", file=sys.stderr)
        print(cl.table())
        return 0
    if a.action == "down":
        cl.stop()
        print("stopped", file=sys.stderr)
        return 0
    if a.action == "transfer":
        before = cl.leader()
        print(f"leader: {before} -> {cl.transfer(a.to, a.timeout)}", file=sys.stderr)
        return 0
    print(cl.as_json() if a.json else cl.table())
    return 0 if cl.leader() else EXIT_UNAVAILABLE


def _client(a) -> C.Client | C.TrustedClient:
    token = a.token or os.environ.get("VAULT_TOKEN") or None
    if a.client:
        return C.TrustedClient(a.client, a.state, timeout=a.timeout, token=token)
    return C.Client(a.fleet, timeout=a.timeout, token=token)


def cmd_enroll(a) -> int:
    secret = _read_secret(a.secret_file)
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    n = _client(a).enroll(a.user, code, secret, a.max_attempts)
    print(f"enrolled {a.user}: {n} attempts allowed", file=sys.stderr)
    return 0


def _warn_failed(rec: C.Recovery) -> None:
    if rec.failed_attempts:
        print(f"warning: {rec.failed_attempts} wrong code(s) were tried since the last "
              "successful recovery", file=sys.stderr)


def cmd_recover(a) -> int:
    if a.out != "-" and os.path.exists(a.out) and not a.force:
        raise UsageError(f"{a.out} exists; use --force to overwrite")
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    rec = _client(a).recover(a.user, code)
    _write_secret(a.out, rec.secret, a.force)
    _warn_failed(rec)
    print(f"recovered the secret of {a.user}" + (f" into {a.out}" if a.out != "-" else ""),
          file=sys.stderr)
    if rec.migrated_from:
        print(f"moved {a.user} from retiring fleet {rec.migrated_from} to the current fleet",
              file=sys.stderr)
    if rec.migration_conflict:
        print(f"warning: the current fleet holds another record for {a.user}; the secret was "
              "recovered from the retiring fleet, whose record is kept: ask the operator",
              file=sys.stderr)
    return 0


def cmd_delete(a) -> int:
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    _warn_failed(_client(a).delete(a.user, code))
    print(f"deleted the record of {a.user}", file=sys.stderr)
    return 0


def cmd_change_code(a) -> int:
    codes = _Codes()
    code = codes.get("VAULT_RECOVERY_CODE", "current recovery code: ", 0)
    new = codes.get("VAULT_NEW_RECOVERY_CODE", "new recovery code: ", 1)
    _warn_failed(_client(a).change_code(a.user, code, new))
    print(f"changed the recovery code of {a.user}", file=sys.stderr)
    return 0


def cmd_change_secret(a) -> int:
    secret = _read_secret(a.secret_file)
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    _warn_failed(_client(a).change_secret(a.user, code, secret))
    print(f"changed the secret of {a.user}", file=sys.stderr)
    return 0


def cmd_demo(a) -> int:
    from vault_raft.ops.demo import run_demo
    return run_demo(a.dir, keep=a.keep)


# ------------------------------------------------------------------ parser

def _user_arg(p):
    p.add_argument("--user", required=True, help=f"user id (1..{limits.USER_ID_MAX} bytes)")


def _fleet_arg(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--client", help="client.json: trust the fleet through its signed bundle")
    g.add_argument("--fleet", help="fleet.json: pin this fleet's keys (operator tools)")
    p.add_argument("--state", default=None, help="with --client: the trust state file "
                   "(default: next to client.json)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to find a majority before giving up (exit 5)")
    p.add_argument("--token", default=None, help="the tenant's token for this user (default: "
                   "VAULT_TOKEN; with --fleet, minted with the fleet directory's local tenant "
                   "key)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vault-raft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    from vault_raft.cli import bench as benchcli
    from vault_raft.cli import chaos as chaoscli
    from vault_raft.cli import sim as simcli
    from vault_raft.cli import trust as trustcli
    fleet = sub.add_parser("fleet", help="create, publish, rotate and verify fleets")
    fsub = fleet.add_subparsers(dest="fleet_cmd", required=True, metavar="ACTION")
    fi = fsub.add_parser("init", help="create node directories, keys and fleet.json")
    fi.add_argument("--dir", required=True)
    fi.add_argument("--nodes", type=int, default=None, help="3..9 (default 3, or the spec's)")
    fi.add_argument("--host", default="127.0.0.1",
                    help="every node's advertised host (IPv4) unless given per node")
    fi.add_argument("--base-port", type=int, default=7100,
                    help="Raft ports are base+i, API ports base+100+i, metrics base+200+i")
    fi.add_argument("--node-host", action="append", default=[], metavar="nK=HOST",
                    help="node nK's advertised host: IPv4 or DNS name (repeatable)")
    fi.add_argument("--bind", default=None, metavar="ADDR",
                    help="the address every node listens on (default: its advertised host)")
    fi.add_argument("--spec", default=None, metavar="FILE",
                    help="fleet spec (JSON, or TOML if FILE ends in .toml): each node's host, "
                    "raft_port, api_port, metrics_port, bind (docs/ops.md)")
    fi.add_argument("--max-attempts", type=int, default=limits.DEFAULT_MAX_ATTEMPTS,
                    help="default guess limit for new records")
    fi.add_argument("--insecure-http", action="store_true",
                    help="serve the client API over plain HTTP instead of TLS 1.3 (local "
                    "debugging only; clients holding client.json refuse such a fleet)")
    fi.set_defaults(fn=cmd_fleet_init)
    fx = fsub.add_parser("export", help="write the files one node's host needs (0700/0600) to "
                                        "a directory or a .tar/.tar.gz archive")
    fx.add_argument("--dir", "--fleet", dest="dir", required=True, help="the fleet directory")
    fx.add_argument("--node", required=True, metavar="nK")
    fx.add_argument("--out", required=True, metavar="DIR|FILE.tar",
                    help="a new or empty directory, or an archive (.tar, .tar.gz, .tgz)")
    fx.set_defaults(fn=cmd_fleet_export)
    fr = fsub.add_parser("replace", help="replace one node of a running fleet: new identity "
                         "and certificate at a new address, Raft membership changed one node "
                         "at a time (the old certificate is revoked), bundle republished")
    fr.add_argument("--dir", "--fleet", dest="dir", required=True, help="the fleet directory "
                    "(the operator's: it holds ca.key, admin.key and the fleet's keys)")
    fr.add_argument("--node", required=True, metavar="nK")
    fr.add_argument("--host", required=True, help="the new node's advertised host")
    fr.add_argument("--raft-port", type=int, default=None, help="default: the old node's")
    fr.add_argument("--api-port", type=int, default=None, help="default: the old node's")
    fr.add_argument("--bind", default=None, metavar="ADDR",
                    help="the address the new node listens on (default: its host)")
    fr.add_argument("--operator", default=None, metavar="O",
                    help="operator directory: republish the bundle and deployment record")
    fr.add_argument("--no-start", action="store_true",
                    help="the new node runs on another machine: do not start it here (the "
                    "command waits for it to be added; copy it with fleet export)")
    fr.add_argument("--timeout", type=float, default=60.0)
    fr.set_defaults(fn=cmd_fleet_replace)
    trustcli.register(sub, fsub)

    tn = sub.add_parser("tenant", help="register tenants (the apps whose users the fleet "
                                       "serves) and mint their tokens")
    tsub = tn.add_subparsers(dest="tenant_cmd", required=True, metavar="ACTION")
    ti = tsub.add_parser("init", help="make a tenant: its signing key and its place in the "
                                      "fleet's signed tenant list (nodes reload it)")
    ti.add_argument("--fleet-dir", required=True, help="the fleet directory (holds admin.key)")
    ti.add_argument("--name", required=True, help="tenant id: 1..32 of a-z, 0-9, '-'")
    ti.add_argument("--audience", action="append", default=[],
                    help="a namespace tokens may name besides the fleet id (repeatable)")
    ti.add_argument("--bare-ids", action="store_true",
                    help="this tenant's users keep their plain ids (at most one tenant: the one "
                    "whose users a fleet made before tenants already holds)")
    ti.add_argument("--public-key", default=None,
                    help="register this existing tenant key (hex) instead of making one: the "
                    "same tenant on another fleet of its namespace")
    for k, v in T.DEFAULT_LIMITS.items():
        ti.add_argument(f"--{k.replace('_', '-')}", type=float, default=v,
                        help=f"requests/s (rate) or bucket size (burst); 0: none (default {v:g})")
    ti.set_defaults(fn=cmd_tenant_init)
    tt = tsub.add_parser("token", help="print a token for a user (scripts and tests; a "
                                       "tenant's server mints its own)")
    tt.add_argument("--fleet-dir", required=True)
    tt.add_argument("--name", required=True, help="the tenant")
    tt.add_argument("--user", required=True)
    tt.add_argument("--audience", default=None, help="default: the fleet id")
    tt.add_argument("--lifetime", type=int, default=300, help="seconds (at most 900)")
    tt.set_defaults(fn=cmd_tenant_token)

    node = sub.add_parser("node", help="run one node in the foreground (SIGTERM stops it)")
    node.add_argument("--dir", required=True, help="the node directory, e.g. FLEET/n1")
    node.set_defaults(fn=cmd_node)

    cl = sub.add_parser("cluster", help="start/stop/inspect every node of a local fleet")
    cl.add_argument("action", choices=["up", "down", "status", "transfer"],
                    help="status and transfer use the signed admin path (FLEET/admin.key)")
    cl.add_argument("--to", default=None, help="transfer: the node to lead (default: the most "
                    "caught-up follower)")
    cl.add_argument("--dir", required=True, help="the fleet directory")
    cl.add_argument("--timeout", type=float, default=30.0)
    cl.add_argument("--json", action="store_true", help="status as JSON")
    cl.set_defaults(fn=cmd_cluster)

    en = sub.add_parser("enroll", help="enroll a user (code from VAULT_RECOVERY_CODE/stdin/prompt)")
    _fleet_arg(en)
    _user_arg(en)
    en.add_argument("--secret-file", required=True)
    en.add_argument("--max-attempts", type=int, default=None)
    en.set_defaults(fn=cmd_enroll)

    rc = sub.add_parser("recover", help="recover a user's secret")
    _fleet_arg(rc)
    _user_arg(rc)
    rc.add_argument("--out", required=True, help="file to write the secret to ('-': stdout)")
    rc.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    rc.set_defaults(fn=cmd_recover)

    de = sub.add_parser("delete", help="delete a record (needs the current code)")
    _fleet_arg(de)
    _user_arg(de)
    de.set_defaults(fn=cmd_delete)

    cc = sub.add_parser("change-code", help="change the recovery code (current, then new code)")
    _fleet_arg(cc)
    _user_arg(cc)
    cc.set_defaults(fn=cmd_change_code)

    cs = sub.add_parser("change-secret", help="replace the stored secret (needs the code)")
    _fleet_arg(cs)
    _user_arg(cs)
    cs.add_argument("--secret-file", required=True)
    cs.set_defaults(fn=cmd_change_secret)

    dm = sub.add_parser("demo", help="local 3-node cluster: enroll, wrong guesses, recovery")
    dm.add_argument("--dir", default=None, help="fleet directory (default: a temporary one)")
    dm.add_argument("--keep", action="store_true", help="leave the cluster running")
    dm.set_defaults(fn=cmd_demo)

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
