"""Fleet layout on disk: ``fleet init`` and the config files it writes.

``DIR/fleet.json`` (public, what clients need)::

    {"version": 1, "fleet_id": "...", "context": "...",
     "opaque_server_public_key": hex, "enroll_public_key": hex,
     "ksf": {...}, "default_max_attempts": 10,
     "channel_ca": hex DER of the fleet CA certificate (pins the API's TLS),
     "nodes": [{"id": "n1", "api": "https://127.0.0.1:7201"}, ...]}

``DIR/nK/node.json`` (one per node) names its Raft address, its peers and
its API address (its advertised host: ``api_host``), the address it listens
on (``bind``; absent: the advertised host), and ``api_tls`` (false only for
``fleet init --insecure-http``); ``DIR/nK/keystore.bin`` (mode 0600) holds the fleet keys
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
from dataclasses import dataclass
from typing import Any

from vault_raft import limits
from vault_raft.api.channel import ca_der_from_pem, check_ca, server_context
from vault_raft.crypto.errors import OpaqueError
from vault_raft.crypto.ksf import KSF
from vault_raft.errors import EXIT_USAGE, VaultRaftError
from vault_raft.trust.bundle import FleetEntry

FLEET_VERSION = 1
ADMIN_KEY_FILE = "admin.key"  # the operator's: signs admin requests to the nodes
STATEMENTS_FILE = "node-statements.bin"  # each node's signed key statement (deployment evidence)
MAX_NODES = 9


class ConfigError(VaultRaftError):
    """A fleet or node config is missing or invalid (message says which and why)."""

    exit_code = EXIT_USAGE


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
    def from_entry(cls, entry) -> FleetInfo:
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
    def load(cls, path: str) -> FleetInfo:
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"fleet file {path} not found "
                              "(run 'vault-raft fleet init')") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"fleet file {path} unreadable: {exc}") from None
        try:
            if d["version"] != FLEET_VERSION:
                raise ConfigError(f"fleet file {path}: unsupported version {d['version']}")
            nodes = tuple(NodeInfo(str(n["id"]), str(n["api"])) for n in d["nodes"])
            if not nodes:
                raise ConfigError(f"fleet file {path}: no nodes")
            fleet_id = str(d["fleet_id"])
            ca: bytes | None
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
            value = limits.DEFAULT_MAX_ATTEMPTS
    if (not isinstance(value, int) or isinstance(value, bool)
            or not 1 <= value <= limits.MAX_ATTEMPTS_LIMIT):
        raise ValueError(
            f"default_max_attempts must be an integer 1..{limits.MAX_ATTEMPTS_LIMIT}")
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
    transport: str = "mtls"  # the Raft transport: mutual TLS is the only one
    admin_key: bytes | None = None  # Ed25519 public key that signs admin requests
    # the fleet's published default (fleet.json)
    default_max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS
    api_tls: bool | None = None  # None (field absent): TLS if the node's TLS files exist
    metrics_port: int | None = None  # Prometheus metrics (plain HTTP on api_host); None: off
    tenants: str = "required"  # "off": no tenant tokens checked (a fleet made before tenants)
    limits: tuple[tuple[str, Any], ...] = ()  # API connection limits (node.limits.Limits)
    bind: str | None = None  # the address it listens on; None (field absent): api_host

    @classmethod
    def load(cls, node_dir: str) -> NodeConfig:
        path = os.path.join(node_dir, "node.json")
        try:
            with open(path) as f:
                d = json.load(f)
            return cls(d["node_id"], d["fleet_id"], os.path.abspath(node_dir), d["raft_addr"],
                       tuple(d["partners"]), d["api_host"], int(d["api_port"]),
                       tuple((str(a), str(n)) for a, n in d.get("peer_ids", {}).items()),
                       tuple((str(k), float(v)) for k, v in d.get("raft", {}).items()),
                       tuple((str(k), str(v)) for k, v in d.get("dial", {}).items()),
                       _transport(d.get("transport", "mtls")),
                       bytes.fromhex(d["admin_key"]) if d.get("admin_key") else None,
                       _default_max_attempts(d, node_dir),
                       _api_tls(d.get("api_tls")),
                       _port_or_none(d.get("metrics_port")),
                       _tenants_mode(d.get("tenants", "required")),
                       tuple((str(k), v) for k, v in dict(d.get("limits", {})).items()),
                       _bind(d.get("bind")))
        except FileNotFoundError:
            raise ConfigError(f"{path} not found: is {node_dir} a node directory "
                              "made by 'vault-raft fleet init'?") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is malformed: {exc}") from None

    @property
    def listen_host(self) -> str:
        """The address the API, metrics and Raft ports listen on."""
        return self.bind if self.bind is not None else self.api_host

    @property
    def raft_bind(self) -> str | None:
        """The Raft port's listen address (``host:port``) when it differs from
        the advertised ``raft_addr``; None otherwise."""
        if self.bind is None:
            return None
        addr = f"{self.bind}:{self.raft_addr.rsplit(':', 1)[1]}"
        return None if addr == self.raft_addr else addr

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
        """The mTLS transport's config (ConfigError if its files are missing)."""
        from vault_raft.raft.transport import TlsConfig
        ca, cert, key = (os.path.join(self.dir, f) for f in ("ca.crt", "tls.crt", "tls.key"))
        missing = [p for p in (ca, cert, key) if not os.path.exists(p)]
        if missing:
            raise ConfigError(f"{self.dir}: TLS files missing: {missing}")
        return TlsConfig(self.fleet_id, self.node_id, ca, cert, key,
                         {nid: addr for addr, nid in self.peer_ids})


def _bind(v) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ValueError("bind must be an address to listen on")
    return v


def _transport(v) -> str:
    if v != "mtls":
        raise ValueError(f"transport must be \"mtls\" (mutual TLS is the only Raft transport), "
                         f"not {v!r}")
    return v


def _api_tls(v) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    raise ValueError("api_tls must be true or false")
