"""Raft membership changes: their log entries, their wire shape, and the
certificate revocations they carry.

pysyncobj 0.3.17 changes membership one node at a time through a log entry of
type ``MEMBERSHIP`` (byte 2) followed by a pickled list ``[kind, node id,
node]``; it applies the change when the entry is appended (leader and
followers), reverts it if the entry is cut, replays it from the journal after
a restart, and takes the cluster list from a snapshot.  Our entries are
``2 || pickle([kind, addr, addr, node_id, cert_sha256])``, every element a
``str`` (pysyncobj reads the first three: kind, node id = Raft address, node;
it ignores the rest):

* ``kind`` is ``"add"`` or ``"rem"``;
* ``addr`` is the node's Raft address (``host:port``);
* ``node_id`` is the fleet node id (``n2``) its certificate names;
* ``cert_sha256`` is the SHA-256 of a certificate's DER, hex: for ``add``,
  the certificate the new node must present (a pin); for ``rem``, the
  certificate that is **revoked** -- every node refuses it at the handshake
  from the moment the entry is in its log, even though the fleet CA signed it.

On the wire (:mod:`.frames`) the entry travels as ``[2, kind, addr, node_id,
cert_sha256]``, checked against :func:`valid`; the receiver rebuilds the
entry's bytes by pickling those validated strings (:func:`entry_bytes`).
Nothing received is unpickled.  The node reads its own entries back with
:func:`parse`, an unpickler that resolves no global (no class, function or
extension code: ``find_class`` always refuses, so no ``REDUCE``/``BUILD``
can run); it builds only the pickle's plain containers and scalars (lists,
tuples, dicts, sets, strings, bytes, numbers), and the result counts only if
it is a list of exactly five strings (checked before anything is compared),
which then pass :func:`valid`.

Membership entries reach a log only through the leader's admin path (an
operator-signed request, :mod:`vault_raft.node.membership`); a follower cannot
forward one (``apply_command`` carries no membership shape), and pysyncobj's
utility commands (add/remove on the Raft port) stay refused.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import threading
from dataclasses import dataclass

from vault_raft.errors import VaultRaftError

MEMBERSHIP = 2  # pysyncobj's _COMMAND_TYPE.MEMBERSHIP
KINDS = ("add", "rem")
_ADDR = re.compile(r"^[A-Za-z0-9.\-]{1,200}:[0-9]{1,5}$")
_NODE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class MembershipError(VaultRaftError, ValueError):
    """Not a membership entry of ours (message says why)."""


@dataclass(frozen=True)
class Change:
    kind: str  # "add" | "rem"
    addr: str  # Raft address host:port
    node_id: str
    cert_sha256: str  # hex SHA-256 of a certificate's DER (pin for add, revoked for rem)

    def to_wire(self) -> list:
        return [MEMBERSHIP, self.kind, self.addr, self.node_id, self.cert_sha256]


def cert_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def valid(v) -> bool:
    """Is ``v`` the wire shape ``[2, kind, addr, node_id, cert_sha256]``?"""
    if not (isinstance(v, list) and len(v) == 5 and v[0] == MEMBERSHIP
            and not isinstance(v[0], bool)):
        return False
    kind, addr, nid, fp = v[1:]
    if not all(isinstance(x, str) for x in (kind, addr, nid, fp)):
        return False
    if kind not in KINDS or not _ADDR.match(addr) or not _NODE_ID.match(nid) \
            or not _SHA256.match(fp):
        return False
    return 1 <= int(addr.rsplit(":", 1)[1]) <= 65535


def from_wire(v) -> Change:
    if not valid(v):
        raise MembershipError("not a membership entry")
    return Change(*v[1:])


def entry_bytes(change: Change) -> bytes:
    """The log entry pysyncobj stores: type byte || pickle of strings only."""
    if not valid(change.to_wire()):
        raise MembershipError(f"invalid membership change {change!r:.120}")
    return bytes([MEMBERSHIP]) + pickle.dumps(
        [change.kind, change.addr, change.addr, change.node_id, change.cert_sha256], 2)


class _ListsAndStrings(pickle.Unpickler):
    def find_class(self, module, name):
        raise MembershipError(f"membership entry pickle refers to {module}.{name}")


def parse(command: bytes) -> Change:
    """A membership entry from this node's own log (as :func:`entry_bytes` made it)."""
    if len(command) < 2 or command[0] != MEMBERSHIP:
        raise MembershipError("not a membership entry")
    try:
        obj = _ListsAndStrings(io.BytesIO(command[1:])).load()
    except MembershipError:
        raise
    except Exception:  # noqa: BLE001 -- not one of ours
        raise MembershipError("membership entry does not decode") from None
    # types first: comparing two crafted nested lists could recurse or take
    # exponential time (shared sublists); two strings compare in linear time
    if not (isinstance(obj, list) and len(obj) == 5
            and all(type(x) is str for x in obj) and obj[1] == obj[2]):
        raise MembershipError("membership entry has the wrong shape")
    return from_wire([MEMBERSHIP, obj[0], obj[1], obj[3], obj[4]])


class Membership:
    """What the membership entries in this node's log say beyond pysyncobj's
    address list: which node id each member address has, which certificate a
    node added by an entry must present, and which certificates are revoked.

    Updated on the Raft thread (as pysyncobj applies or reverts an entry),
    read by the transport at each handshake and by the admin status.  Kept in
    snapshots (:meth:`to_dict`), so a node whose journal was compacted past
    the entries still refuses a revoked certificate."""

    def __init__(self, ids: dict[str, str] | None = None):
        self.ids: dict[str, str] = dict(ids or {})  # raft address -> node id
        self.pins: dict[str, str] = {}  # node id -> cert sha256 (nodes added by an entry)
        self.revoked: set[str] = set()
        self._lock = threading.Lock()
        self.on_change = None  # called with (change, reverse) after each update

    def apply(self, change: Change, reverse: bool = False) -> None:
        adding = (change.kind == "add") != reverse
        with self._lock:
            if adding:
                for a in [a for a, n in self.ids.items() if n == change.node_id]:
                    del self.ids[a]  # one address per node id
                self.ids[change.addr] = change.node_id
                if change.kind == "add":
                    self.pins[change.node_id] = change.cert_sha256
                else:  # a removal cut from the log: the certificate is good again
                    self.revoked.discard(change.cert_sha256)
            else:
                if self.ids.get(change.addr) == change.node_id:
                    del self.ids[change.addr]
                if change.kind == "rem":
                    self.revoked.add(change.cert_sha256)
                    if self.pins.get(change.node_id) == change.cert_sha256:
                        del self.pins[change.node_id]
                elif self.pins.get(change.node_id) == change.cert_sha256:
                    del self.pins[change.node_id]  # an addition cut from the log
        if self.on_change is not None:
            self.on_change(change, reverse)

    def check_certificate(self, node_id: str, der: bytes) -> None:
        """ValueError if this (CA-verified) certificate is revoked, or is not
        the one pinned for ``node_id``."""
        fp = cert_sha256(der)
        with self._lock:
            if fp in self.revoked:
                raise ValueError(f"certificate {fp[:16]} of {node_id} is revoked (the node was "
                                 "replaced)")
            pin = self.pins.get(node_id)
        if pin is not None and pin != fp:
            raise ValueError(f"certificate {fp[:16]} is not the one the membership names for "
                             f"{node_id} ({pin[:16]})")

    def node_id(self, addr: str) -> str | None:
        with self._lock:
            return self.ids.get(addr)

    def to_dict(self, lock: bool = True) -> dict:
        """The state as a map (``lock=False`` in a forked snapshot child, where
        a lock held by another thread at the fork would never be released)."""
        if not lock:
            return {"ids": dict(self.ids), "pins": dict(self.pins),
                    "revoked": sorted(self.revoked)}
        with self._lock:
            return self.to_dict(lock=False)

    def load(self, d) -> None:
        """Install the state a snapshot holds (ValueError if malformed)."""
        if not isinstance(d, dict):
            raise ValueError("membership in snapshot is not a map")
        ids, pins, revoked = d.get("ids"), d.get("pins"), d.get("revoked")
        if not (isinstance(ids, dict) and isinstance(pins, dict) and isinstance(revoked, list)):
            raise ValueError("membership in snapshot is malformed")
        for a, n in ids.items():
            if not (isinstance(a, str) and _ADDR.match(a) and isinstance(n, str)
                    and _NODE_ID.match(n)):
                raise ValueError("membership in snapshot names a bad address or node id")
        for n, fp in pins.items():
            if not (isinstance(n, str) and _NODE_ID.match(n) and isinstance(fp, str)
                    and _SHA256.match(fp)):
                raise ValueError("membership in snapshot has a bad pin")
        if not all(isinstance(fp, str) and _SHA256.match(fp) for fp in revoked):
            raise ValueError("membership in snapshot has a bad revocation")
        with self._lock:
            self.ids, self.pins, self.revoked = dict(ids), dict(pins), set(revoked)
        if self.on_change is not None:
            self.on_change(None, False)
