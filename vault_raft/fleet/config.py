"""Fleet layout on disk: ``fleet init`` and the config files it writes.

``DIR/fleet.json`` (public, what clients need)::

    {"version": 1, "fleet_id": "...", "context": "...",
     "opaque_server_public_key": hex, "enroll_public_key": hex,
     "ksf": {...}, "default_max_attempts": 10,
     "channel_ca": hex DER of the fleet CA certificate (pins the API's TLS),
     "nodes": [{"id": "n1", "api": "https://127.0.0.1:7201"}, ...]}

``DIR/nK/node.json`` (one per node) names its Raft address, its peers and
its API address (and ``api_tls``: false only for ``fleet init
--insecure-http``); ``DIR/nK/keystore.bin`` (mode 0600) holds the fleet keys
and the node's own identity key; ``DIR/node-statements.bin`` holds every
node's signed statement of its keys (deployment evidence, see :mod:`.deployment`).

A ``fleet.json`` written before the API had TLS has no ``channel_ca``: it is
read with the CA from ``ca.crt`` beside it and its ``http://`` node URLs as
``https://`` (its nodes' ``node.json`` has no ``api_tls`` either, so they
serve TLS).

``fleet.json`` *pins* the fleet's keys: it is for the operator's own tools on
the machine that made the fleet (bench, chaos, tests).  End-user clients trust
a fleet through a signed bundle instead (:mod:`.bundle`, ``client.json``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from ..crypto.ksf import DEFAULT_KSF, KSF
from ..crypto.errors import OpaqueError
from ..replica.journal import atomic_write
from ..channel import ca_der_from_pem, check_ca, server_context
from .bundle import FleetEntry
from .keystore import FileKeystore, new_signing_key_file

FLEET_VERSION = 1
ADMIN_KEY_FILE = "admin.key"  # the operator's: signs admin requests to the nodes
STATEMENTS_FILE = "node-statements.bin"  # each node's signed key statement (deployment evidence)
MAX_NODES = 9


class ConfigError(Exception):
    """A fleet or node config is missing or invalid (message says which and why)."""


def opaque_context(fleet_id: str) -> bytes:
    return b"vault-raft OPAQUE v1 " + fleet_id.encode()


@dataclass(frozen=True)
class NodeInfo:
    id: str
    api: str


@dataclass(frozen=True)
class FleetInfo:
    fleet_id: str
    context: bytes
    opaque_server_public_key: bytes
    enroll_public_key: bytes
    ksf: KSF
    default_max_attempts: int
    nodes: tuple[NodeInfo, ...]
    channel_ca: bytes | None = None  # DER of the fleet CA: the client channel's pin

    def to_entry(self, role: str, deployment: bytes = bytes(32)) -> FleetEntry:
        return FleetEntry(self.fleet_id, role, self.opaque_server_public_key,
                          self.enroll_public_key, tuple(sorted(self.ksf.to_dict().items())),
                          self.default_max_attempts, tuple(n.api for n in self.nodes), deployment,
                          self.channel_ca or b"")

    @classmethod
    def from_entry(cls, entry) -> "FleetInfo":
        """The fleet a *verified* bundle entry describes."""
        try:
            ksf = KSF.from_dict(dict(entry.ksf))
        except OpaqueError as exc:
            raise ConfigError(f"bundle entry {entry.fleet_id}: bad KSF: {exc}") from None
        ca = entry.channel_ca or None
        if ca is not None:
            try:
                check_ca(ca, entry.fleet_id)
            except ValueError as exc:
                raise ConfigError(f"bundle entry {entry.fleet_id}: bad channel CA: {exc}") from None
        return cls(entry.fleet_id, opaque_context(entry.fleet_id), entry.opaque_server_key,
                   entry.enroll_key, ksf, entry.max_attempts,
                   tuple(NodeInfo(f"{entry.fleet_id}/{i}", url)
                         for i, url in enumerate(entry.endpoints, start=1)), ca)

    @classmethod
    def load(cls, path: str) -> "FleetInfo":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"fleet file {path} not found (run 'vault-raft fleet init')") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"fleet file {path} unreadable: {exc}") from None
        try:
            if d["version"] != FLEET_VERSION:
                raise ConfigError(f"fleet file {path}: unsupported version {d['version']}")
            nodes = tuple(NodeInfo(str(n["id"]), str(n["api"])) for n in d["nodes"])
            if not nodes:
                raise ConfigError(f"fleet file {path}: no nodes")
            fleet_id = str(d["fleet_id"])
            if "channel_ca" in d:
                ca = bytes.fromhex(d["channel_ca"])
            else:  # written before the API had TLS: its nodes serve TLS now
                ca = _legacy_channel_ca(os.path.dirname(os.path.abspath(path)))
                if ca is not None:
                    nodes = tuple(NodeInfo(n.id, "https://" + n.api[len("http://"):]
                                           if n.api.startswith("http://") else n.api)
                                  for n in nodes)
            if ca is not None:
                check_ca(ca, fleet_id)
            return cls(fleet_id, d["context"].encode(),
                       bytes.fromhex(d["opaque_server_public_key"]),
                       bytes.fromhex(d["enroll_public_key"]), KSF.from_dict(d["ksf"]),
                       int(d["default_max_attempts"]), nodes, ca)
        except (KeyError, TypeError, ValueError, AttributeError, OpaqueError) as exc:
            raise ConfigError(f"fleet file {path} is malformed: {exc}") from None


def _default_max_attempts(d: dict, node_dir: str) -> int:
    """node.json's ``default_max_attempts``; node directories made before the
    field existed take it from the fleet directory's fleet.json beside them."""
    value = d.get("default_max_attempts")
    if value is None:
        try:
            with open(os.path.join(node_dir, os.pardir, "fleet.json")) as f:
                value = json.load(f)["default_max_attempts"]
        except (OSError, ValueError, KeyError, TypeError):
            value = 10
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise ValueError("default_max_attempts must be an integer 1..100")
    return value


def _tenants_mode(value) -> str:
    if value not in ("required", "off"):
        raise ValueError('tenants must be "required" or "off"')
    return value


def _port_or_none(value) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= 65535:
        raise ValueError("metrics_port must be a port number or null")
    return value


def _legacy_channel_ca(fleet_dir: str) -> bytes | None:
    try:
        with open(os.path.join(fleet_dir, "ca.crt"), "rb") as f:
            return ca_der_from_pem(f.read())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    fleet_id: str
    dir: str
    raft_addr: str
    partners: tuple[str, ...]
    api_host: str
    api_port: int
    peer_ids: tuple[tuple[str, str], ...] = ()  # (raft address, node id) for every node
    raft: tuple[tuple[str, float], ...] = ()  # RaftSettings overrides (tests, tuning)
    dial: tuple[tuple[str, str], ...] = ()  # peer raft address -> address to dial (chaos proxies)
    transport: str = "plain"  # "mtls" (fleet init's default) or pysyncobj's TCP ("plain")
    admin_key: bytes | None = None  # Ed25519 public key that signs admin requests
    default_max_attempts: int = 10  # the fleet's published default (fleet.json)
    api_tls: bool | None = None  # None (field absent): TLS if the node's TLS files exist
    metrics_port: int | None = None  # Prometheus metrics (plain HTTP on api_host); None: off
    tenants: str = "required"  # "off": no tenant tokens checked (a fleet made before tenants)
    limits: tuple[tuple[str, Any], ...] = ()  # API connection limits (httpguard.Limits)

    @classmethod
    def load(cls, node_dir: str) -> "NodeConfig":
        path = os.path.join(node_dir, "node.json")
        try:
            with open(path) as f:
                d = json.load(f)
            return cls(d["node_id"], d["fleet_id"], os.path.abspath(node_dir), d["raft_addr"],
                       tuple(d["partners"]), d["api_host"], int(d["api_port"]),
                       tuple((str(a), str(n)) for a, n in d.get("peer_ids", {}).items()),
                       tuple((str(k), float(v)) for k, v in d.get("raft", {}).items()),
                       tuple((str(k), str(v)) for k, v in d.get("dial", {}).items()),
                       str(d.get("transport", "plain")),
                       bytes.fromhex(d["admin_key"]) if d.get("admin_key") else None,
                       _default_max_attempts(d, node_dir),
                       _api_tls(d.get("api_tls")),
                       _port_or_none(d.get("metrics_port")),
                       _tenants_mode(d.get("tenants", "required")),
                       tuple((str(k), v) for k, v in dict(d.get("limits", {})).items()))
        except FileNotFoundError:
            raise ConfigError(f"{path} not found: is {node_dir} a node directory "
                              "made by 'vault-raft fleet init'?") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is malformed: {exc}") from None

    @property
    def keystore_path(self) -> str:
        return os.path.join(self.dir, "keystore.bin")

    @property
    def data_dir(self) -> str:
        return os.path.join(self.dir, "data")

    def api_ssl_context(self):
        """The API's TLS 1.3 server context (the node's fleet certificate), or
        None when node.json says ``"api_tls": false`` (plain HTTP: debugging only).
        Without the field the node serves TLS; ConfigError if it cannot."""
        if self.api_tls is False:
            return None
        cert, key = (os.path.join(self.dir, f) for f in ("tls.crt", "tls.key"))
        missing = [p for p in (cert, key) if not os.path.exists(p)]
        if missing:
            raise ConfigError(f"{self.dir}: the API is served over TLS, but {missing} are "
                              "missing (re-create the fleet, or set \"api_tls\": false in "
                              "node.json to serve plain HTTP for local debugging)")
        try:
            return server_context(cert, key)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.dir}: the API's TLS key or certificate is unusable: "
                              f"{exc}") from None

    def tls_config(self):
        """The mTLS transport's config, or None for the plain transport."""
        if self.transport == "plain":
            return None
        if self.transport != "mtls":
            raise ConfigError(f"{self.dir}/node.json: transport must be mtls or plain")
        from ..replica.tls import TlsConfig
        paths = [os.path.join(self.dir, f) for f in ("ca.crt", "tls.crt", "tls.key")]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ConfigError(f"{self.dir}: TLS files missing: {missing}")
        return TlsConfig(self.fleet_id, self.node_id, *paths,
                         {nid: addr for addr, nid in self.peer_ids})


def _api_tls(v) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    raise ValueError("api_tls must be true or false")


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
    if not 1 <= max_attempts <= 100:
        raise ConfigError("max attempts must be 1..100")
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
    from ..replica.tls import issue_node_cert, make_ca
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
    from ..tenant import add_tenant
    add_tenant(directory, "local", bare_ids=True,
               limits=local_tenant_limits or {"tenant_rate": 0.0, "user_rate": 0.0})
    return fleet_json
