"""The fleet-directory side of ``fleet replace``: a new node directory for a
node id at a new address, and the fleet files that name it.

:func:`prepare` builds the new node's directory in ``FLEET/.replace-nK/``
(0700) and writes nothing else: a fresh identity key and a certificate from
the fleet CA naming the node at its new address, the fleet's keys, the
fleet CA certificate and the signed tenant list.  The fleet's keys come from
the **operator's offline copy** -- the fleet directory on the operator's
machine, which holds every node's keystore -- not from a running node: no
node ever sends the fleet's secrets over the network, so there is no path
for them to leak through, and the new host receives them as it received
them at ``fleet init`` (``fleet export --node nK``).

:func:`install` runs once the old node is out of the Raft membership: the
old directory moves to ``FLEET/replaced/nK-<time>-<cert>/`` (kept: its
journal is evidence, and its certificate's fingerprint is what the fleet
revoked), the new one takes its place, and ``fleet.json``, the other nodes'
``node.json`` (peer addresses) and ``node-statements.bin`` (the new node's
signed key statement instead of the old one's) name the new node.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vault_raft.fleet.config import STATEMENTS_FILE, ConfigError, FleetInfo
from vault_raft.fleet.create import check_bind, check_host
from vault_raft.fleet.keystore import FileKeystore
from vault_raft.raft.membership import cert_sha256
from vault_raft.raft.pki import issue_node_cert
from vault_raft.storage.files import atomic_write

#: copied from the old node's directory as they are (fleet-wide, not the node's own)
SHARED_FILES = ("ca.crt", "tenants.bin", "trust.bin")
REPLACED_DIR = "replaced"


@dataclass(frozen=True)
class Replacement:
    node_id: str
    old_addr: str
    new_addr: str
    old_cert_sha256: str
    new_cert_sha256: str
    staging: str  # the new node directory, until install() moves it into place
    api_url: str


def _cert_fp(path: str) -> str:
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return cert_sha256(cert.public_bytes(serialization.Encoding.DER))


def _node_json(path: str) -> dict:
    try:
        with open(os.path.join(path, "node.json")) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}/node.json unreadable: {exc}") from None


def _write_json(path: str, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


def staging_dir(fleet_dir: str, node_id: str) -> str:
    return os.path.join(fleet_dir, f".replace-{node_id}")


def prepare(fleet_dir: str, node_id: str, host: str, raft_port: int | None = None,
            api_port: int | None = None, bind: str | None = None) -> Replacement:
    """Build the new directory for ``node_id`` at ``host`` (ports default to
    the old node's); ConfigError if the fleet has no such node or lacks the
    operator's files (``ca.key``, a keystore)."""
    fleet_dir = os.path.abspath(fleet_dir)
    fleet = FleetInfo.load(os.path.join(fleet_dir, "fleet.json"))
    ids = [n.id for n in fleet.nodes]
    if node_id not in ids:
        raise ConfigError(f"no node {node_id!r} in the fleet {fleet_dir} (nodes: "
                          f"{', '.join(ids)})")
    host = check_host(host, "--host")
    ca_key_path = os.path.join(fleet_dir, "ca.key")
    if not os.path.exists(ca_key_path):
        raise ConfigError(f"{ca_key_path} not found: replacing a node needs the operator's "
                          "fleet directory (the fleet CA's key issues the new certificate)")
    old_dir = os.path.join(fleet_dir, node_id)
    old = _node_json(old_dir)
    old_port = int(old["raft_addr"].rsplit(":", 1)[1])
    raft_port = old_port if raft_port is None else raft_port
    api_port = int(old["api_port"]) if api_port is None else api_port
    for p, what in ((raft_port, "--raft-port"), (api_port, "--api-port")):
        if not 1024 <= p <= 65535:
            raise ConfigError(f"{what} must be 1024..65535, got {p}")
    if bind is None and not all(part.isdigit() for part in host.split(".")):
        raise ConfigError(f"{host} is a DNS name: give the address the node listens on "
                          "(--bind)")
    bind = check_bind(bind if bind is not None else host, "--bind")
    new_addr = f"{host}:{raft_port}"
    others = {n: _node_json(os.path.join(fleet_dir, n)) for n in ids if n != node_id}
    if any(o["raft_addr"] == new_addr for o in others.values()):
        raise ConfigError(f"{new_addr} is another node's Raft address")
    # the fleet's keys: the operator's copy (this node's keystore, else another's)
    ks = None
    for n in [node_id] + sorted(others):
        path = os.path.join(fleet_dir, n, "keystore.bin")
        if os.path.exists(path):
            ks = FileKeystore.load(path)
            break
    if ks is None or ks.fleet_id != fleet.fleet_id:
        raise ConfigError(f"{fleet_dir}: no keystore of fleet {fleet.fleet_id} to take the "
                          "fleet's keys from")
    with open(ca_key_path, "rb") as f:
        ca_key = f.read()
    with open(os.path.join(fleet_dir, "ca.crt"), "rb") as f:
        ca_cert = f.read()

    stage = staging_dir(fleet_dir, node_id)
    shutil.rmtree(stage, ignore_errors=True)  # a replacement that did not finish
    os.makedirs(stage, mode=0o700)
    node_ks = ks.for_node(node_id)  # the fleet's keys, a fresh identity key
    node_ks.save(os.path.join(stage, "keystore.bin"))
    key_pem, cert_pem = issue_node_cert(ca_key, ca_cert, fleet.fleet_id, node_id, new_addr,
                                        host=host)
    atomic_write(os.path.join(stage, "tls.key"), key_pem)
    atomic_write(os.path.join(stage, "tls.crt"), cert_pem)
    for name in SHARED_FILES:
        src = os.path.join(old_dir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(stage, name))
            os.chmod(os.path.join(stage, name), 0o600)
    peers = {o["raft_addr"]: n for n, o in others.items()}
    peers[new_addr] = node_id
    cfg = dict(old, raft_addr=new_addr, partners=sorted(a for a in peers if a != new_addr),
               api_host=host, api_port=api_port, bind=bind, peer_ids=peers)
    _write_json(os.path.join(stage, "node.json"), cfg)
    created = int(time.time())
    st, sig = node_ks.key_statement(created)
    atomic_write(os.path.join(stage, "statement.bin"), msgpack.packb([st, sig],
                                                                     use_bin_type=True))
    scheme = "https" if cfg.get("api_tls", True) is not False else "http"
    return Replacement(node_id, old["raft_addr"], new_addr,
                       _cert_fp(os.path.join(old_dir, "tls.crt")),
                       _cert_fp(os.path.join(stage, "tls.crt")), stage,
                       f"{scheme}://{host}:{api_port}")


def install(fleet_dir: str, rep: Replacement) -> str:
    """Put the new node directory in place of the old one and update the
    fleet's files; returns where the old directory went."""
    fleet_dir = os.path.abspath(fleet_dir)
    old_dir = os.path.join(fleet_dir, rep.node_id)
    keep = os.path.join(fleet_dir, REPLACED_DIR,
                        f"{rep.node_id}-{int(time.time())}-{rep.old_cert_sha256[:12]}")
    os.makedirs(os.path.dirname(keep), mode=0o700, exist_ok=True)
    with open(os.path.join(rep.staging, "statement.bin"), "rb") as f:
        statement = msgpack.unpackb(f.read(), raw=False)
    os.unlink(os.path.join(rep.staging, "statement.bin"))
    os.rename(old_dir, keep)
    os.rename(rep.staging, old_dir)
    # the other nodes' configs name the new address (for their next start)
    fleet_path = os.path.join(fleet_dir, "fleet.json")
    with open(fleet_path) as f:
        fleet = json.load(f)
    for n in fleet["nodes"]:
        if n["id"] == rep.node_id:
            n["api"] = rep.api_url
            continue
        path = os.path.join(fleet_dir, n["id"], "node.json")
        cfg = _node_json(os.path.dirname(path))
        peers = {a: i for a, i in cfg["peer_ids"].items() if i != rep.node_id}
        peers[rep.new_addr] = rep.node_id
        cfg.update(peer_ids=peers, partners=sorted(a for a in peers if a != cfg["raft_addr"]))
        _write_json(path, cfg)
    _write_json(fleet_path, fleet)
    st_path = os.path.join(fleet_dir, STATEMENTS_FILE)
    with open(st_path, "rb") as f:
        statements = msgpack.unpackb(f.read(), raw=False)
    out = [statement if msgpack.unpackb(s[0], raw=False)[2] == rep.node_id else s
           for s in statements]
    atomic_write(st_path, msgpack.packb(out, use_bin_type=True))
    return keep
