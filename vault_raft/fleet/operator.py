"""The operator's side of fleet trust: publish and rotate signed bundles.

An operator directory (``vault-raft operator init``) holds the operator's
Ed25519 key (0600), ``operator.json`` (namespace, witness URL and key,
validity), ``published.json`` (the last epoch, its digest, which fleets it
named, and a bundle in flight) and ``client.json`` -- what end-user clients
are given: the namespace, the operator's and the witness's public keys and
bootstrap endpoints.  Nothing in ``client.json`` is secret or fleet-specific
enough to need a client update on rotation.

``publish`` builds the next epoch's bundle, has the witness co-sign and log
it, then writes ``trust.bin`` (the signed bundle, a verified copy of the
witness's log, and each fleet's deployment record) into every node directory
of every fleet the bundle names.  Nodes serve it to clients.  The bundle in
flight is saved before the witness is asked, so a publish interrupted after
the witness logged it is finished by running ``publish`` again (the witness
returns the same co-signature for the same bundle).
"""

from __future__ import annotations

import glob
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Sequence

import msgpack

from vault_raft.api import http as wire
from vault_raft.errors import VaultRaftError
from vault_raft.fleet.config import STATEMENTS_FILE, ConfigError, FleetInfo
from vault_raft.fleet.keystore import load_signing_key, new_signing_key_file
from vault_raft.storage.files import atomic_write
from vault_raft.trust import bundle as B
from vault_raft.trust import deployment as D
from vault_raft.trust.mirror import LogMirror

TRUST_FILE = "trust.bin"
# 2: the log as leaf hashes ("leaf_hashes") and its head naming the namespace's newest
# bundle; 1 (no "format"): every statement ("statements") and a v1 head.  Nodes read both.
TRUST_FORMAT = 2
DEPLOYMENT_FILE = "deployment.bin"
CLIENT_VERSION = 1


class OperatorError(VaultRaftError):
    """Publishing failed (the message says where and whether to retry)."""


def _write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise OperatorError(f"{what} {path} not found") from None
    except (OSError, ValueError) as exc:
        raise OperatorError(f"{what} {path} unreadable: {exc}") from None


def init_operator(directory: str, namespace: str, witness: str, witness_key: bytes,
                  validity_days: float = 30.0, max_head_age: int | None = None) -> str:
    """Create an operator directory; returns the path of ``client.json``.

    The operator's public key is also written to ``operator.pub`` (hex), which
    the witness's operator registers (``vault-raft witness register``)."""
    if not namespace or len(namespace.encode()) > B.MAX_NAMESPACE or not namespace.isprintable():
        raise OperatorError(f"--namespace must be 1..{B.MAX_NAMESPACE} bytes of printable "
                            "characters")
    if max_head_age is not None and not 60 <= max_head_age <= MAX_HEAD_AGE_LIMIT:
        raise OperatorError(f"--max-head-age must be 60..{MAX_HEAD_AGE_LIMIT} seconds")
    if len(witness_key) != 32:
        raise OperatorError("--witness-key must be the witness's 32-byte public key in hex")
    if not witness.startswith("http://"):
        raise OperatorError("--witness must be an http://host:port URL")
    if not 0 < validity_days <= 366:
        raise OperatorError("--validity-days must be in (0, 366]")
    cfg_path = os.path.join(directory, "operator.json")
    if os.path.exists(cfg_path):
        raise OperatorError(f"{cfg_path} exists: refusing to overwrite an operator")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pk = new_signing_key_file(os.path.join(directory, "operator.key"))
    atomic_write(os.path.join(directory, "operator.pub"), (pk.hex() + "\n").encode())
    cfg = {"namespace": namespace, "witness": witness, "witness_key": witness_key.hex(),
           "operator_key": pk.hex(), "validity_days": validity_days}
    if max_head_age is not None:
        cfg["max_head_age"] = max_head_age
    _write_json(cfg_path, cfg)
    client = os.path.join(directory, "client.json")
    _write_json(client, client_config(namespace, pk, witness_key, [], max_head_age))
    return client


MAX_HEAD_AGE_LIMIT = 7 * 86400


def client_config(namespace: str, operator_pk: bytes, witness_pk: bytes,
                  endpoints: list[str], max_head_age: int | None = None) -> dict:
    out = {"version": CLIENT_VERSION, "namespace": namespace,
           "operator_key": operator_pk.hex(), "witness_key": witness_pk.hex(),
           "endpoints": endpoints}
    if max_head_age is not None:
        out["max_head_age"] = max_head_age
    return out


def fetch_log(witness: str, witness_pk: bytes, mirror: LogMirror | None = None,
              timeout: float = 5.0, namespace: str = "") -> LogMirror:
    """Bring a verified copy of the witness's log up to date (its last head
    names ``namespace``'s newest bundle)."""
    mirror = mirror or LogMirror(witness_pk)
    ns = "&namespace=" + urllib.parse.quote(namespace, safe="") if namespace else ""

    def page(start: int) -> dict:
        status, out = wire.call(witness, "GET", f"/v1/log?start={start}{ns}", timeout=timeout)
        if status != 200:
            raise OperatorError(f"witness {witness}: HTTP {status}: {out.get('message')}")
        return out
    mirror.update(page)
    return mirror


class Operator:
    def __init__(self, directory: str):
        self.dir = os.path.abspath(directory)
        cfg = _read_json(os.path.join(self.dir, "operator.json"), "operator config")
        try:
            self.namespace = str(cfg["namespace"])
            self.witness = str(cfg["witness"])
            self.witness_key = bytes.fromhex(cfg["witness_key"])
            self.validity = float(cfg["validity_days"]) * 86400
            self.max_head_age = cfg.get("max_head_age")
            if self.max_head_age is not None:
                self.max_head_age = int(self.max_head_age)
        except (KeyError, ValueError, TypeError) as exc:
            raise OperatorError(f"{self.dir}/operator.json is malformed: {exc}") from None
        self.sk = load_signing_key(os.path.join(self.dir, "operator.key"), "operator key")
        self.pk = self.sk.public_key().public_bytes_raw()
        self.state_path = os.path.join(self.dir, "published.json")
        try:
            with open(self.state_path) as f:
                self.state = json.load(f)
        except FileNotFoundError:
            self.state = {"epoch": 0, "digest": bytes(32).hex(), "current": None,
                          "retiring": [], "pending": None}

    @property
    def client_path(self) -> str:
        return os.path.join(self.dir, "client.json")

    # -------------------------------------------------------------- fleets
    def _deployment(self, fleet_dir: str, info: FleetInfo) -> dict:
        try:
            with open(os.path.join(fleet_dir, STATEMENTS_FILE), "rb") as f:
                statements = [tuple(x) for x in msgpack.unpackb(f.read(), raw=False)]
        except (OSError, ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise OperatorError(f"{fleet_dir}: node statements unreadable ({exc})") from None
        record, sig = D.assemble(info.fleet_id, statements, self.sk)
        return {"record": record, "operator_sig": sig}

    def _fleet(self, fleet_dir: str) -> tuple[str, FleetInfo]:
        d = os.path.abspath(fleet_dir)
        try:
            return d, FleetInfo.load(os.path.join(d, "fleet.json"))
        except ConfigError as exc:
            raise OperatorError(str(exc)) from None

    # ------------------------------------------------------------ publish
    def publish(self, current: str, retiring: Sequence[str] = (), now: int | None = None,
                progress: Callable[[str], None] = lambda m: None) -> B.Bundle:
        """Publish the next epoch naming ``current`` (and ``retiring`` fleets)."""
        now = int(time.time()) if now is None else now
        cur_dir, cur = self._fleet(current)
        ret = [self._fleet(r) for r in retiring]
        if cur_dir in {d for d, _ in ret}:
            raise OperatorError("a fleet cannot be current and retiring at once")
        deployments = {}
        entries = []
        for (d, info), role in [((cur_dir, cur), "current")] + [(x, "retiring") for x in ret]:
            dep = self._deployment(d, info)
            deployments[info.fleet_id] = dep
            if not info.channel_ca:  # clients would refuse it: say so here
                raise OperatorError(f"{d}: fleet {info.fleet_id} has no channel CA (no "
                                    "channel_ca in fleet.json, no ca.crt): clients pin the "
                                    "nodes' TLS to it, so it cannot be published")
            entries.append(info.to_entry(role, D.digest(dep["record"])))
        pending = self.state.get("pending")
        if pending and pending["fleets"] == [cur_dir] + [d for d, _ in ret]:
            canon = bytes.fromhex(pending["bundle"])  # finish the interrupted publish
            bundle = B.Bundle.from_canonical(canon)
        else:
            bundle = B.Bundle(self.namespace, self.state["epoch"] + 1, tuple(entries), now - 300,
                              int(now + self.validity), bytes.fromhex(self.state["digest"]))
            canon = bundle.canonical()
            self.state["pending"] = {"bundle": canon.hex(),
                                     "fleets": [cur_dir] + [d for d, _ in ret]}
            _write_json(self.state_path, self.state)
        sig = self.sk.sign(canon)
        progress(f"witness {self.witness}: co-signing {self.namespace} epoch {bundle.epoch}")
        try:
            status, out = wire.call(self.witness, "POST", "/v1/cosign",
                                    {"bundle": canon, "operator_sig": sig,
                                     "operator_key": self.pk})
        except (OSError, wire.WireError) as exc:
            raise OperatorError(f"witness {self.witness} unreachable ({exc}); run the same "
                                "command again to finish this publish") from None
        if status != 200:
            if status == 409:
                self.state["pending"] = None
                _write_json(self.state_path, self.state)
            raise OperatorError(f"the witness refused epoch {bundle.epoch}: "
                                f"{out.get('message')}")
        mirror = fetch_log(self.witness, self.witness_key, LogMirror(self.witness_key, keep=_none),
                           namespace=self.namespace)
        signed = B.SignedBundle(canon, sig, out["statement"], out["witness_sig"],
                                out["leaf_index"], [], mirror.sth, mirror.sth_sig)
        # check what we publish exactly as a client will (a client with no state:
        # the head must name this bundle as the namespace's newest)
        signed.inclusion, _ = mirror.proofs(signed.leaf_index, 0)
        B.verify(signed, self.pk, self.witness_key, B.TrustState(), now,
                 max(B.MAX_HEAD_AGE, self.max_head_age or 0))
        trust = {"format": TRUST_FORMAT, "namespace": self.namespace,
                 "signed": signed.to_wire(), "witness": self.witness,
                 "witness_key": self.witness_key, "leaf_hashes": mirror.tree.leaf_hashes(),
                 "sth": mirror.sth, "sth_sig": mirror.sth_sig, "deployments": deployments}
        blob = msgpack.packb(trust, use_bin_type=True)
        # nothing is written into fleet directories before the witness has logged the bundle
        written = 0
        for d, info in [(cur_dir, cur)] + ret:
            atomic_write(os.path.join(d, DEPLOYMENT_FILE),
                         msgpack.packb(deployments[info.fleet_id], use_bin_type=True))
            for node_json in sorted(glob.glob(os.path.join(d, "*", "node.json"))):
                atomic_write(os.path.join(os.path.dirname(node_json), TRUST_FILE), blob)
                written += 1
        progress(f"trust file written to {written} node directories")
        self.state.update(epoch=bundle.epoch, digest=bundle.digest.hex(), current=cur_dir,
                          retiring=[d for d, _ in ret], pending=None)
        _write_json(self.state_path, self.state)
        endpoints = [e for entry in bundle.fleets for e in entry.endpoints]
        _write_json(self.client_path, client_config(self.namespace, self.pk, self.witness_key,
                                                    endpoints, self.max_head_age))
        return bundle

    def rotate(self, new_fleet: str, now: int | None = None,
               progress: Callable[[str], None] = lambda m: None) -> B.Bundle:
        """Make ``new_fleet`` current; the fleet current so far starts retiring."""
        old = self.state.get("current")
        if old is None:
            raise OperatorError("nothing published yet: use 'fleet publish' first")
        if os.path.abspath(new_fleet) == old:
            raise OperatorError(f"{new_fleet} is already the current fleet")
        retiring = [old] + [r for r in self.state.get("retiring", [])
                            if r != os.path.abspath(new_fleet)]
        return self.publish(new_fleet, retiring, now, progress)


def _none(statement: bytes) -> bool:
    return False


def load_trust_file(path: str) -> dict | None:
    """A node's ``trust.bin`` (None if nothing was published to it yet), format 1 or 2."""
    try:
        with open(path, "rb") as f:
            d = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise OperatorError(f"{path} unreadable: {exc}") from None
    if not isinstance(d, dict) or "signed" not in d:
        raise OperatorError(f"{path} is not a trust file")
    fmt = d.get("format", 1)
    if fmt not in (1, TRUST_FORMAT):
        raise OperatorError(f"{path}: trust file format {fmt!r} is newer than this node "
                            f"understands (1..{TRUST_FORMAT}): upgrade the node")
    if fmt == 1 and not isinstance(d.get("statements"), list) or \
            fmt == 2 and not isinstance(d.get("leaf_hashes"), bytes):
        raise OperatorError(f"{path} is not a format {fmt} trust file")
    return d


def trust_mirror(trust: dict, **kw) -> LogMirror:
    """The verified copy of the witness's log a trust file carries (either format)."""
    if trust.get("format", 1) == 1:
        return LogMirror.from_statements(trust["witness_key"], trust["statements"], trust["sth"],
                                         trust["sth_sig"], keep=_none, **kw)
    return LogMirror.from_hashes(trust["witness_key"], trust["leaf_hashes"], trust["sth"],
                                 trust["sth_sig"], keep=_none, **kw)
