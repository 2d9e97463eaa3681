"""Create a fleet directory: ``fleet init``.

Writes the layout :mod:`vault_raft.fleet.config` reads (``fleet.json``, one
``nK/`` directory per node, the fleet CA and certificates, the operator's admin
key and the operator's own tenant ``local``) and nothing unless every check
passes.
"""

from __future__ import annotations

import json
import os
import socket
import time

import msgpack

from vault_raft import limits
from vault_raft.api.channel import ca_der_from_pem
from vault_raft.crypto.ksf import DEFAULT_KSF, KSF
from vault_raft.fleet.config import (
    ADMIN_KEY_FILE,
    FLEET_VERSION,
    MAX_NODES,
    STATEMENTS_FILE,
    ConfigError,
    opaque_context,
)
from vault_raft.fleet.keystore import FileKeystore, new_signing_key_file
from vault_raft.fleet.tenants import add_tenant
from vault_raft.raft.pki import issue_node_cert, make_ca
from vault_raft.storage.journal import atomic_write


def port_free(host: str, port: int) -> bool:
    """Can ``host:port`` be bound right now?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def init_fleet(directory: str, nodes: int, host: str = "127.0.0.1", base_port: int = 7100,
               max_attempts: int = 10, ksf: KSF = DEFAULT_KSF, check_ports: bool = True,
               api_tls: bool = True, local_tenant_limits: dict | None = None) -> str:
    """Create a fleet directory; returns the path of ``fleet.json``.

    It holds the operator's tenant ``local`` (its key in ``tenants/local.key``),
    which owns the plain user ids and has no rate limits unless
    ``local_tenant_limits`` says otherwise: the operator's own CLI mints its
    users' tokens with it.

    Raft ports are ``base_port + i``, API ports ``base_port + 100 + i``, metrics
    ports (plain HTTP, Prometheus) ``base_port + 200 + i``
    (i = 1..nodes).  Refuses to overwrite an existing fleet; writes nothing
    unless every check passes.  The API is served over TLS 1.3 with each
    node's fleet certificate; ``api_tls=False`` (``--insecure-http``) serves
    plain HTTP instead, for local debugging only.
    """
    if not 3 <= nodes <= MAX_NODES:
        raise ConfigError(f"--nodes must be 3..{MAX_NODES} (a vault needs a majority that "
                          "survives a failure)")
    if not 1024 <= base_port <= 65535 - 200 - nodes:
        raise ConfigError("--base-port must leave room for 3*nodes ports below 65535 "
                          "(and be >= 1024)")
    if not 1 <= max_attempts <= limits.MAX_ATTEMPTS_LIMIT:
        raise ConfigError(f"max attempts must be 1..{limits.MAX_ATTEMPTS_LIMIT}")
    try:
        socket.inet_aton(host)
    except OSError:
        raise ConfigError(f"--host must be an IPv4 address, got {host!r}") from None
    fleet_json = os.path.join(directory, "fleet.json")
    if os.path.exists(fleet_json):
        raise ConfigError(f"{fleet_json} exists: refusing to overwrite a fleet "
                          "(remove the directory first)")
    if check_ports:
        busy = [p for i in range(1, nodes + 1)
                for p in (base_port + i, base_port + 100 + i, base_port + 200 + i)
                if not port_free(host, p)]
        if busy:
            raise ConfigError(f"ports already in use on {host}: {busy}; choose another "
                              "--base-port")
    fleet_id = os.urandom(8).hex()
    ks = FileKeystore.generate(fleet_id)
    ca_key, ca_cert = make_ca(fleet_id)
    raft = [f"{host}:{base_port + i}" for i in range(1, nodes + 1)]
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, "ca.key"), ca_key)  # the operator's: issues node certs
    atomic_write(os.path.join(directory, "ca.crt"), ca_cert)
    admin_pk = new_signing_key_file(os.path.join(directory, ADMIN_KEY_FILE))
    node_entries, statements, created = [], [], int(time.time())
    for i in range(1, nodes + 1):
        nid = f"n{i}"
        ndir = os.path.join(directory, nid)
        os.makedirs(ndir, mode=0o700, exist_ok=True)
        node_ks = ks.for_node(nid)
        node_ks.save(os.path.join(ndir, "keystore.bin"))
        statements.append(list(node_ks.key_statement(created)))
        key_pem, cert_pem = issue_node_cert(ca_key, ca_cert, fleet_id, nid, raft[i - 1])
        atomic_write(os.path.join(ndir, "tls.key"), key_pem)
        atomic_write(os.path.join(ndir, "tls.crt"), cert_pem)
        atomic_write(os.path.join(ndir, "ca.crt"), ca_cert)
        cfg = {"node_id": nid, "fleet_id": fleet_id, "raft_addr": raft[i - 1],
               "partners": [a for a in raft if a != raft[i - 1]],
               "api_host": host, "api_port": base_port + 100 + i,
               "peer_ids": {a: f"n{j}" for j, a in enumerate(raft, start=1)},
               "transport": "mtls", "admin_key": admin_pk.hex(), "api_tls": api_tls,
               "default_max_attempts": max_attempts,
               "metrics_port": base_port + 200 + i}
        with open(os.path.join(ndir, "node.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        scheme = "https" if api_tls else "http"
        node_entries.append({"id": nid, "api": f"{scheme}://{host}:{base_port + 100 + i}"})
    fleet = {
        "version": FLEET_VERSION,
        "fleet_id": fleet_id,
        "context": opaque_context(fleet_id).decode(),
        "opaque_server_public_key": ks.opaque_setup().public_key.hex(),
        "enroll_public_key": ks.enroll_public_key().hex(),
        "ksf": ksf.to_dict(),
        "default_max_attempts": max_attempts,
        "channel_ca": ca_der_from_pem(ca_cert).hex(),
        "nodes": node_entries,
    }
    atomic_write(os.path.join(directory, STATEMENTS_FILE),
                 msgpack.packb(statements, use_bin_type=True))
    tmp = fleet_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(fleet, f, indent=2)
    os.replace(tmp, fleet_json)
    add_tenant(directory, "local", bare_ids=True,
               limits=local_tenant_limits or {"tenant_rate": 0.0, "user_rate": 0.0})
    return fleet_json
