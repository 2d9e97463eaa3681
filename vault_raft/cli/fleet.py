"""``vault-raft fleet init|export|replace`` and ``vault-raft tenant init|token``:
making a fleet, handing a node its files, replacing a node, and the tenants
whose users the fleet serves.  (``fleet publish|rotate|verify...`` are in
:mod:`vault_raft.cli.trust`.)  Errors are reported by ``cli.main``."""

from __future__ import annotations

import argparse
import os
import sys

from vault_raft import limits
from vault_raft.errors import EXIT_UNAVAILABLE, UsageError
from vault_raft.fleet import tenants as T
from vault_raft.fleet.config import ConfigError, FleetInfo
from vault_raft.fleet.create import init_fleet, load_spec
from vault_raft.fleet.export import export_node
from vault_raft.fleet.keystore import KeystoreError


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


def register(sub) -> argparse._SubParsersAction:
    """``fleet`` and its first actions; returns its sub-parsers (trust adds more)."""
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
    return fsub


def register_tenant(sub) -> None:
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
