"""Create a fleet directory: ``fleet init``.

Writes the layout :mod:`vault_raft.fleet.config` reads (``fleet.json``, one
``nK/`` directory per node, the fleet CA and certificates, the operator's admin
key and the operator's own tenant ``local``) and nothing unless every check
passes.  The directory is built beside its target under a temporary name and
renamed into place when complete, so no partial fleet is ever left behind.

**Addresses.**  Every node has an advertised host (the address its peers
and clients reach it at: its Raft address, its API URL in ``fleet.json``,
the host its certificate names), a Raft, an API and a metrics port, and a
bind address (what it listens on; by default its advertised host).  By
default every node advertises ``--host`` with ports ``base+i``,
``base+100+i`` and ``base+200+i``; ``--node-host nK=HOST`` gives one node its
own host, and a fleet spec (:func:`load_spec`) gives each node its host and
ports.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass

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
from vault_raft.storage.files import atomic_write


def port_free(host: str, port: int) -> bool:
    """Can ``host:port`` be bound right now?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def is_local_address(host: str) -> bool:
    """Is ``host`` an address of this machine (in this network namespace)?
    The wildcard ``0.0.0.0`` counts as local."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
            return True
        except socket.gaierror:
            return False
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


def _ipv4(value: str) -> bool:
    try:
        socket.inet_aton(value)
        return True
    except (OSError, TypeError, ValueError):
        return False


def check_host(value, what: str) -> str:
    """An advertised host: an IPv4 address or a DNS name (ConfigError otherwise)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be an IPv4 address or a DNS name, got {value!r}")
    if _ipv4(value):
        if socket.inet_aton(value) == bytes(4):
            raise ConfigError(f"{what} must be an address a node is reached at, not {value} "
                              "(that is a listen address: --bind)")
        return value
    labels = value.rstrip(".").split(".")
    if len(value) <= 253 and all(_LABEL.match(x) for x in labels) \
            and not labels[-1].isdigit():
        return value
    raise ConfigError(f"{what} must be an IPv4 address or a DNS name, got {value!r} "
                      "(IPv6 addresses are not supported)")


def check_bind(value, what: str) -> str:
    if not isinstance(value, str) or not _ipv4(value):
        raise ConfigError(f"{what} must be an IPv4 address to listen on (e.g. 0.0.0.0), "
                          f"got {value!r}")
    return value


def _port(value, what: str) -> int:
    if type(value) is not int or not 1024 <= value <= 65535:
        raise ConfigError(f"{what} must be a port number 1024..65535, got {value!r}")
    return value


@dataclass(frozen=True)
class NodeAddress:
    """Where one node is reached (``host``) and what it listens on (``bind``)."""
    id: str
    host: str
    raft_port: int
    api_port: int
    metrics_port: int | None
    bind: str

    @property
    def raft_addr(self) -> str:
        return f"{self.host}:{self.raft_port}"


SPEC_KEYS = {"bind", "nodes"}
SPEC_NODE_KEYS = {"id", "host", "raft_port", "api_port", "metrics_port", "bind"}


def load_spec(path: str) -> dict:
    """Read a fleet spec (JSON, or TOML for a ``.toml`` file)::

        bind = "0.0.0.0"          # optional: every node's listen address
        [[nodes]]
        id = "n1"                 # optional; if given, n1, n2, ... in order
        host = "vault-1.example"  # the advertised host (IPv4 or DNS name)
        raft_port = 7101          # optional, as without a spec: base+i
        api_port = 7201           # optional: base+100+i
        metrics_port = 7301       # optional: base+200+i
        bind = "10.0.0.1"         # optional: this node's listen address

    The same as JSON: ``{"bind": ..., "nodes": [{"host": ..., ...}, ...]}``.
    Checked by :func:`plan_addresses`; unknown keys are refused."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"fleet spec {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".toml"):
            import tomllib
            spec = tomllib.loads(raw.decode())
        else:
            spec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"fleet spec {path} is malformed: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), list):
        raise ConfigError(f"fleet spec {path}: needs a list of nodes (\"nodes\")")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"fleet spec {path}: unknown keys {sorted(unknown)}")
    for i, n in enumerate(spec["nodes"], start=1):
        if not isinstance(n, dict):
            raise ConfigError(f"fleet spec {path}: node {i} is not a table/object")
        unknown = set(n) - SPEC_NODE_KEYS
        if unknown:
            raise ConfigError(f"fleet spec {path}: node {i}: unknown keys {sorted(unknown)}")
    return spec


def plan_addresses(nodes: int | None = None, host: str = "127.0.0.1", base_port: int = 7100,
                   node_hosts: dict[str, str] | None = None, bind: str | None = None,
                   spec: dict | None = None) -> list[NodeAddress]:
    """Every node's addresses, checked (ConfigError says what is wrong).

    ``nodes`` defaults to the spec's node count (or 3); ``host`` is every
    node's default advertised host; ``node_hosts`` maps node ids to their own
    hosts; ``bind`` is every node's listen address (default: its host)."""
    try:
        socket.inet_aton(host)
    except OSError:
        raise ConfigError(f"--host must be an IPv4 address, got {host!r}") from None
    entries = list(spec["nodes"]) if spec is not None else []
    if spec is not None:
        if nodes is not None and nodes != len(entries):
            raise ConfigError(f"--nodes {nodes} but the fleet spec lists {len(entries)} nodes")
        nodes = len(entries)
        if bind is None and spec.get("bind") is not None:
            bind = spec["bind"]
    nodes = 3 if nodes is None else nodes
    if not 3 <= nodes <= MAX_NODES:
        raise ConfigError(f"--nodes must be 3..{MAX_NODES} (a vault needs a majority that "
                          "survives a failure)")
    if not 1024 <= base_port <= 65535 - 200 - nodes:
        raise ConfigError("--base-port must leave room for 3*nodes ports below 65535 "
                          "(and be >= 1024)")
    if bind is not None:
        check_bind(bind, "--bind")
    ids = [f"n{i}" for i in range(1, nodes + 1)]
    for nid in node_hosts or {}:
        if nid not in ids:
            raise ConfigError(f"--node-host {nid}=...: no node {nid!r} in a {nodes}-node fleet "
                              f"(nodes are {', '.join(ids)})")
    out = []
    for i, nid in enumerate(ids, start=1):
        e = entries[i - 1] if entries else {}
        if e.get("id", nid) != nid:
            raise ConfigError(f"fleet spec: node {i} must be {nid!r} (nodes are n1, n2, ... in "
                              f"order), got {e.get('id')!r}")
        h = (node_hosts or {}).get(nid, e.get("host", host))
        h = check_host(h, f"the host of {nid}")
        raft_port = _port(e.get("raft_port", base_port + i), f"{nid}'s raft_port")
        api_port = _port(e.get("api_port", base_port + 100 + i), f"{nid}'s api_port")
        metrics = e.get("metrics_port", base_port + 200 + i)
        if metrics is not None:
            metrics = _port(metrics, f"{nid}'s metrics_port")
        b = e.get("bind", bind)
        if b is None and not _ipv4(h):
            raise ConfigError(f"{nid}'s host {h} is a DNS name: give the address it listens "
                              "on (--bind, or \"bind\" in the fleet spec)")
        b = h if b is None else check_bind(b, f"{nid}'s bind address")
        out.append(NodeAddress(nid, h, raft_port, api_port, metrics, b))
    seen: dict[tuple[str, int], str] = {}
    for a in out:
        for what, port in (("raft", a.raft_port), ("api", a.api_port),
                           ("metrics", a.metrics_port)):
            if port is None:
                continue
            other = seen.get((a.host, port))
            if other is not None:
                raise ConfigError(f"{a.id}'s {what} port {a.host}:{port} is also {other}: "
                                  "every port of a host serves one thing")
            seen[(a.host, port)] = f"{a.id}'s {what} port"
    return out


def _check_ports(addrs: list[NodeAddress]) -> None:
    """Nodes on this machine: their ports must be free (nodes elsewhere are
    not checked)."""
    busy = []
    for a in addrs:
        if not is_local_address(a.host):
            continue
        busy += [f"{a.bind}:{p}" for p in (a.raft_port, a.api_port, a.metrics_port)
                 if p is not None and not port_free(a.bind, p)]
    if busy:
        raise ConfigError(f"ports already in use: {busy}; choose another --base-port")


def _prepare_target(directory: str) -> str:
    """The parent directory the fleet is built in; ConfigError if ``directory``
    holds a fleet or anything else."""
    fleet_json = os.path.join(directory, "fleet.json")
    if os.path.exists(fleet_json):
        raise ConfigError(f"{fleet_json} exists: refusing to overwrite a fleet "
                          "(remove the directory first)")
    if os.path.lexists(directory):
        if not os.path.isdir(directory):
            raise ConfigError(f"{directory} exists and is not a directory")
        if os.listdir(directory):
            raise ConfigError(f"{directory} is not empty and holds no fleet.json: refusing to "
                              "create a fleet in it (choose a new or empty directory)")
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    return parent


def init_fleet(directory: str, nodes: int | None = None, host: str = "127.0.0.1",
               base_port: int = 7100, max_attempts: int = 10, ksf: KSF = DEFAULT_KSF,
               check_ports: bool = True, api_tls: bool = True,
               local_tenant_limits: dict | None = None,
               node_hosts: dict[str, str] | None = None, bind: str | None = None,
               spec: dict | None = None) -> str:
    """Create a fleet directory; returns the path of ``fleet.json``.

    It holds the operator's tenant ``local`` (its key in ``tenants/local.key``),
    which owns the plain user ids and has no rate limits unless
    ``local_tenant_limits`` says otherwise: the operator's own CLI mints its
    users' tokens with it.

    Addresses: :func:`plan_addresses` (by default Raft ports ``base_port + i``,
    API ports ``base_port + 100 + i``, metrics ports (plain HTTP, Prometheus)
    ``base_port + 200 + i``, i = 1..nodes, all on ``host``).  Refuses to
    overwrite an existing fleet or to fill a non-empty directory; writes
    nothing unless every check passes.  The API is served over TLS 1.3 with
    each node's fleet certificate; ``api_tls=False`` (``--insecure-http``)
    serves plain HTTP instead, for local debugging only.
    """
    addrs = plan_addresses(nodes, host, base_port, node_hosts, bind, spec)
    if not 1 <= max_attempts <= limits.MAX_ATTEMPTS_LIMIT:
        raise ConfigError(f"max attempts must be 1..{limits.MAX_ATTEMPTS_LIMIT}")
    parent = _prepare_target(directory)
    if check_ports:
        _check_ports(addrs)
    tmp = tempfile.mkdtemp(prefix=".fleet-init-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        _write_fleet(tmp, addrs, max_attempts, ksf, api_tls, local_tenant_limits)
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty (checked above); replaced by the complete fleet
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(directory, "fleet.json")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_fleet(directory: str, addrs: list[NodeAddress], max_attempts: int, ksf: KSF,
                 api_tls: bool, local_tenant_limits: dict | None) -> None:
    fleet_json = os.path.join(directory, "fleet.json")
    fleet_id = os.urandom(8).hex()
    ks = FileKeystore.generate(fleet_id)
    ca_key, ca_cert = make_ca(fleet_id)
    raft = [a.raft_addr for a in addrs]
    atomic_write(os.path.join(directory, "ca.key"), ca_key)  # the operator's: issues node certs
    atomic_write(os.path.join(directory, "ca.crt"), ca_cert)
    admin_pk = new_signing_key_file(os.path.join(directory, ADMIN_KEY_FILE))
    node_entries, statements, created = [], [], int(time.time())
    scheme = "https" if api_tls else "http"
    for a in addrs:
        ndir = os.path.join(directory, a.id)
        os.makedirs(ndir, mode=0o700, exist_ok=True)
        node_ks = ks.for_node(a.id)
        node_ks.save(os.path.join(ndir, "keystore.bin"))
        statements.append(list(node_ks.key_statement(created)))
        key_pem, cert_pem = issue_node_cert(ca_key, ca_cert, fleet_id, a.id, a.raft_addr,
                                            host=a.host)
        atomic_write(os.path.join(ndir, "tls.key"), key_pem)
        atomic_write(os.path.join(ndir, "tls.crt"), cert_pem)
        atomic_write(os.path.join(ndir, "ca.crt"), ca_cert)
        cfg = {"node_id": a.id, "fleet_id": fleet_id, "raft_addr": a.raft_addr,
               "partners": [r for r in raft if r != a.raft_addr],
               "api_host": a.host, "api_port": a.api_port, "bind": a.bind,
               "peer_ids": {b.raft_addr: b.id for b in addrs},
               "transport": "mtls", "admin_key": admin_pk.hex(), "api_tls": api_tls,
               "default_max_attempts": max_attempts,
               "metrics_port": a.metrics_port}
        with open(os.path.join(ndir, "node.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        node_entries.append({"id": a.id, "api": f"{scheme}://{a.host}:{a.api_port}"})
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
    with open(fleet_json, "w") as f:
        json.dump(fleet, f, indent=2)
    add_tenant(directory, "local", bare_ids=True,
               limits=local_tenant_limits or {"tenant_rate": 0.0, "user_rate": 0.0})
