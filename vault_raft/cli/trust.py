"""Fleet-trust commands: ``witness``, ``operator``, ``fleet publish|rotate|verify|
verify-deployment`` and ``audit verify``.  Errors are reported by ``cli.main``."""

from __future__ import annotations

import datetime
import hashlib
import os
import sys

from vault_raft.errors import VaultRaftError
from vault_raft.trust import bundle as B


class TrustCommandError(VaultRaftError):
    """A trust command could not do its job (message says why); exit 1."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _key_arg(value: str) -> bytes:
    """A 32-byte public key: hex, or @FILE holding hex (e.g. @W/witness.pub)."""
    if value.startswith("@"):
        try:
            with open(value[1:]) as f:
                value = f.read().strip()
        except OSError as exc:
            raise TrustCommandError(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise TrustCommandError("a public key must be 64 hex digits (or @FILE)") from None
    if len(key) != 32:
        raise TrustCommandError("a public key must be 32 bytes (64 hex digits)")
    return key


def _ts(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _show_bundle(b: B.Bundle) -> None:
    print(f"namespace {b.namespace}  epoch {b.epoch}  digest {b.digest.hex()[:16]}")
    print(f"valid {_ts(b.not_before)} .. {_ts(b.not_after)}")
    for f in b.fleets:
        ca = hashlib.sha256(f.channel_ca).hexdigest()[:16] if f.channel_ca else "NONE (v1)"
        print(f"  {f.role:9} fleet {f.fleet_id}  opaque key {f.opaque_server_key.hex()[:16]}  "
              f"{len(f.endpoints)} nodes  deployment {f.deployment.hex()[:16]}  "
              f"channel CA {ca}")


# ------------------------------------------------------------------ witness
def cmd_witness_init(a) -> int:
    from vault_raft.ops.witness_server import init_witness
    pk = init_witness(a.dir, a.host, a.port)
    print(pk.hex())
    _say(f"witness created in {a.dir}; public key in {a.dir}/witness.pub; "
         f"start it with: vault-raft witness serve --dir {a.dir}")
    return 0


def _registry(directory: str):
    from vault_raft.ops.witness_server import registry
    from vault_raft.trust.witness import RegistryError
    reg = registry(directory)
    try:
        reg.keys()
    except RegistryError as exc:
        raise TrustCommandError(str(exc)) from None
    return reg


def cmd_witness_register(a) -> int:
    key = _key_arg(a.operator_key)
    added = _registry(a.dir).add(key, a.note or "")
    _say(f"operator key {key.hex()} " + ("registered: it may now create namespaces"
                                         if added else "was already registered"))
    return 0


def cmd_witness_unregister(a) -> int:
    key = _key_arg(a.operator_key)
    if not _registry(a.dir).remove(key):
        raise TrustCommandError(f"operator key {key.hex()} is not registered")
    _say(f"operator key {key.hex()} unregistered: it creates no new namespace (those it "
         "created stay its own)")
    return 0


def cmd_witness_operators(a) -> int:
    keys = _registry(a.dir).keys()
    for k, v in sorted(keys.items(), key=lambda kv: kv[1]["added"]):
        print(f"{k}  added {_ts(v['added'])}  {v['note']}".rstrip())
    _say(f"{len(keys)} operator key(s) registered in {a.dir}")
    return 0


def cmd_witness_serve(a) -> int:
    import logging

    from vault_raft.ops.witness_server import run_witness
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_witness(a.dir)


# ----------------------------------------------------------------- operator
def _local_witness_dir(key_arg: str) -> str | None:
    """The witness directory ``--witness-key @W/witness.pub`` points into, if
    this user can edit it (then they are the witness's operator)."""
    if not key_arg.startswith("@"):
        return None
    d = os.path.dirname(os.path.abspath(key_arg[1:]))
    if os.path.isfile(os.path.join(d, "witness.json")) and os.access(d, os.W_OK):
        return d
    return None


def cmd_operator_init(a) -> int:
    from vault_raft.fleet.operator import init_operator
    wkey = _key_arg(a.witness_key)
    path = init_operator(a.dir, a.namespace, a.witness, wkey, a.validity_days,
                         max_head_age=a.max_head_age)
    _say(f"operator created in {a.dir}; give clients {path}")
    opk_file = os.path.join(a.dir, "operator.pub")
    wdir = _local_witness_dir(a.witness_key)
    if wdir is not None:
        with open(opk_file) as f:
            opk = bytes.fromhex(f.read().strip())
        _registry(wdir).add(opk, f"operator init {os.path.abspath(a.dir)}")
        _say(f"operator key registered with the witness in {wdir} (its directory is yours)")
    else:
        _say("before the first publish, the witness's operator must register this key: "
             f"vault-raft witness register --dir W --operator-key @{opk_file}")
    return 0


def cmd_fleet_publish(a) -> int:
    from vault_raft.fleet.operator import Operator
    op = Operator(a.operator)
    b = op.publish(a.fleet, progress=_say) if a.fleet_cmd == "publish" else \
        op.rotate(a.to, progress=_say)
    _show_bundle(b)
    _say(f"published; clients use {op.client_path}")
    return 0


def _trusted(a):
    from vault_raft.client import TrustedClient
    return TrustedClient(a.client, a.state, timeout=a.timeout)


def cmd_fleet_verify(a) -> int:
    b = _trusted(a).verify_fleet()
    _show_bundle(b)
    _say("bundle verified: operator and witness signatures, validity window, inclusion in the "
         "witness's log, consistency with the log seen before")
    return 0


def cmd_fleet_verify_deployment(a) -> int:
    from vault_raft.api import channel as CH
    from vault_raft.api import http as wire
    from vault_raft.trust import deployment as D
    tc = _trusted(a)
    b = tc.verify_fleet()
    failed = 0
    for entry in b.fleets:
        if entry.deployment == bytes(32):
            print(f"{entry.fleet_id}: FAIL no deployment record published")
            failed += 1
            continue
        rec, err = None, "no node answered"
        pin = CH.for_fleet(entry)  # the verified bundle's channel key
        for url in entry.endpoints:
            try:
                status, out = wire.call(url, "GET", f"/v1/deployment?fleet={entry.fleet_id}",
                                        channel=pin)
            except CH.ChannelRefused as exc:
                err = f"{url}: not a node of this fleet ({exc})"
                continue
            except (OSError, wire.WireError) as exc:
                err = f"{url}: {exc.__class__.__name__}"
                continue
            if status == 200 and isinstance(out.get("record"), bytes) \
                    and isinstance(out.get("operator_sig"), bytes):
                rec = out
                break
            err = f"{url}: HTTP {status} {out.get('message')}"
        if rec is None:
            print(f"{entry.fleet_id}: FAIL record unavailable ({err})")
            failed += 1
            continue
        try:
            nodes = D.verify(rec["record"], rec["operator_sig"], tc.config.operator_key, entry)
        except D.DeploymentError as exc:
            print(f"{entry.fleet_id}: FAIL {exc}")
            failed += 1
            continue
        print(f"{entry.fleet_id} ({entry.role}): OK, {len(nodes)} nodes")
        for n in nodes:
            print(f"  {n['node']:4} node key {n['node_key'][:16]}  created {_ts(n['created'])}  "
                  f"holds {', '.join(n['keys'])}")
    return 1 if failed else 0


# -------------------------------------------------------------------- audit
def cmd_audit_verify(a) -> int:
    from vault_raft.fleet.operator import OperatorError, fetch_log
    from vault_raft.trust.audit import audit, check_namespace_head
    key = _key_arg(a.witness_key)
    state_path = a.state or os.path.join(os.getcwd(), "audit-state.json")
    state = B.TrustState.load(state_path)
    try:
        mirror = fetch_log(a.witness, key)
    except (OSError, OperatorError) as exc:
        raise TrustCommandError(f"cannot fetch the witness's log: {exc}") from None
    except B.TrustError as exc:
        print(f"FAIL: {exc.__class__.__name__}: {exc}")
        return 1
    report = audit(mirror, state)
    # the heads clients rely on for freshness must tell the truth about each namespace
    from urllib.parse import quote

    from vault_raft.api import http as wire
    for ns in sorted(report.entries):
        if a.namespace and ns != a.namespace:
            continue
        try:
            status, page = wire.call(a.witness, "GET",
                                     f"/v1/log?start={mirror.size}&namespace={quote(ns, safe='')}")
        except (OSError, wire.WireError) as exc:
            raise TrustCommandError(f"cannot fetch the witness's head for {ns}: {exc}") from None
        if status != 200:
            report.problems.append(f"{ns}: the witness answered HTTP {status} for its head")
            continue
        check_namespace_head(report, mirror, page, ns)
    print(f"witness log: {report.size} entries, root {report.root.hex()[:16]}, every tree head "
          "signed and consistent")
    for ns, rows in sorted(report.entries.items()):
        if a.namespace and ns != a.namespace:
            continue
        print(f"namespace {ns}:")
        for i, epoch, digest, ts in rows:
            print(f"  epoch {epoch:3}  digest {digest.hex()[:16]}  logged {_ts(ts)}  (entry {i})")
    for p in report.problems:
        print(f"PROBLEM: {p}")
    if report.ok:
        state.save(state_path)
        print("audit passed")
        return 0
    return 1


def register(sub, fleet_sub) -> None:
    w = sub.add_parser("witness", help="the independent witness that co-signs bundles")
    ws = w.add_subparsers(dest="witness_cmd", required=True, metavar="ACTION")
    wi = ws.add_parser("init", help="create a witness directory and key (prints the public key)")
    wi.add_argument("--dir", required=True)
    wi.add_argument("--host", default="127.0.0.1")
    wi.add_argument("--port", type=int, default=7000)
    wi.set_defaults(fn=cmd_witness_init)
    wv = ws.add_parser("serve", help="run the witness in the foreground (SIGTERM stops it)")
    wv.add_argument("--dir", required=True)
    wv.set_defaults(fn=cmd_witness_serve)
    wr = ws.add_parser("register", help="allow an operator key to create namespaces (a running "
                       "witness picks it up at once)")
    wr.add_argument("--dir", required=True)
    wr.add_argument("--operator-key", required=True, help="hex or @FILE (e.g. @O/operator.pub)")
    wr.add_argument("--note", default="", help="who this key is, for the list")
    wr.set_defaults(fn=cmd_witness_register)
    wu = ws.add_parser("unregister", help="stop an operator key from creating namespaces")
    wu.add_argument("--dir", required=True)
    wu.add_argument("--operator-key", required=True, help="hex or @FILE")
    wu.set_defaults(fn=cmd_witness_unregister)
    wo = ws.add_parser("operators", help="list the registered operator keys")
    wo.add_argument("--dir", required=True)
    wo.set_defaults(fn=cmd_witness_operators)

    o = sub.add_parser("operator", help="the operator identity that signs bundles")
    os_ = o.add_subparsers(dest="operator_cmd", required=True, metavar="ACTION")
    oi = os_.add_parser("init", help="create an operator key and client.json")
    oi.add_argument("--dir", required=True)
    oi.add_argument("--namespace", required=True, help="the service name clients ask for")
    oi.add_argument("--witness", required=True, help="witness URL, e.g. http://127.0.0.1:7000")
    oi.add_argument("--witness-key", required=True, help="witness public key: hex or @FILE "
                    "(@W/witness.pub of a witness directory you own also registers the new "
                    "operator key with it)")
    oi.add_argument("--validity-days", type=float, default=30.0)
    oi.add_argument("--max-head-age", type=int, default=None, metavar="SECONDS",
                    help="how old a witness tree head clients accept, i.e. how long after a "
                    f"new epoch a superseded bundle can still be served (default "
                    f"{B.MAX_HEAD_AGE} s; written to client.json)")
    oi.set_defaults(fn=cmd_operator_init)

    fp = fleet_sub.add_parser("publish", help="publish the next bundle epoch naming this fleet "
                              "(drops retiring fleets)")
    fp.add_argument("--fleet", required=True, help="fleet directory")
    fp.add_argument("--operator", required=True, help="operator directory")
    fp.set_defaults(fn=cmd_fleet_publish)
    fr = fleet_sub.add_parser("rotate", help="make a new fleet current; the old one retires "
                              "(users move on their next recovery)")
    fr.add_argument("--to", required=True, help="the new fleet's directory")
    fr.add_argument("--operator", required=True)
    fr.set_defaults(fn=cmd_fleet_publish)
    for name, fn, text in (("verify", cmd_fleet_verify, "fetch and verify the bundle as a "
                            "client does"),
                           ("verify-deployment", cmd_fleet_verify_deployment,
                            "check each fleet's deployment record against the bundle")):
        p = fleet_sub.add_parser(name, help=text)
        p.add_argument("--client", required=True, help="client.json")
        p.add_argument("--state", default=None, help="trust state file (default: next to "
                       "client.json)")
        p.add_argument("--timeout", type=float, default=10.0)
        p.set_defaults(fn=fn)

    au = sub.add_parser("audit", help="monitor a witness's log")
    aus = au.add_subparsers(dest="audit_cmd", required=True, metavar="ACTION")
    av = aus.add_parser("verify", help="verify every tree head and consistency; list bundles")
    av.add_argument("--witness", required=True, help="witness URL")
    av.add_argument("--witness-key", required=True, help="hex or @FILE")
    av.add_argument("--state", default=None, help="where the last audited tree head is kept "
                    "(default ./audit-state.json)")
    av.add_argument("--namespace", default=None, help="list only this namespace")
    av.set_defaults(fn=cmd_audit_verify)
