"""The vault state machine: every rule that decides whether a guess is allowed.

Rules of this file (read them before changing anything):

1. Everything that affects a vault record -- whether an attempt is counted,
   when a record is destroyed, when a sealed secret may be released, who may
   change or delete a record -- lives *here*, in this file, and nowhere else.
   Nodes only propose commands and act on the results.
2. Sans-IO: no sockets, threads, clocks, randomness or files.  Times (``now``,
   milliseconds) and ids (attempt ids, record versions) arrive inside the
   command, chosen by the proposing node.  The same log therefore produces
   the same state on every replica, and tests can drive it exhaustively.
3. ``apply`` never raises.  A malformed command is answered with
   ``{"ok": False, "code": "bad_command"}`` and changes nothing, not even the
   clock (pysyncobj would retry a raising entry forever).
4. Commands and snapshots are msgpack with a version field; unknown versions
   are refused, not guessed at.
5. Record transitions are the table ``TRANSITIONS`` below.  A (status, op)
   pair missing from it is refused with no state change.

The guess limit: ``begin_attempt`` is committed *before* the node computes
KE2, and counts the attempt in the same step in which it is allowed.  When
``attempts_used == max_attempts`` the next ``begin_attempt`` destroys the
record (secret and OPAQUE record wiped, a tombstone kept).  Since an OPAQUE
guess can only be tested with an evaluation of the record's OPRF key, and the
only evaluation of that key any endpoint performs is the KE2 that follows a
committed ``begin_attempt``, the number of guesses that can be tested against
a record is at most ``max_attempts`` between two successes.

Per-record OPRF keys: every record carries a credential identifier
(``cred_id``, 32 random bytes chosen by the node at ``enroll/start``) from
which the fleet derives the record's OPRF key.  Registration evaluates a
*fresh* identifier's key, never an existing record's, so it is no oracle.

Single-use enrollment: ``enroll`` and ``change_code`` carry the ticket the
node issued at ``enroll/start``: a nonce, an expiry, and the position in the
log of the state it was issued from (``ticket_seq``, the count of commands
that state had applied).  The machine refuses a ticket

* whose expiry has passed on the machine's clock (the highest ``now``
  applied: monotone, so clock skew between proposers cannot revive one);
* whose nonce it has already seen (whatever that command's outcome);
* issued before the user's record last changed identity (enrolled, code
  changed, destroyed or deleted): a request held back and sent after such a
  change is stale.

Nonces are remembered until the clock passes their expiry, so that memory
is bounded by the tickets used within ``TICKET_TTL_MS``; the position of
each user's last identity change is kept for good (one integer per user
ever enrolled, next to the records themselves).  A recorded or held-back
request is therefore refused in every state.

Format history: version 1 commands and snapshots (before per-record keys)
are still applied, as they were written: a version 1 record's credential
identifier is its user id (the key the old ``enroll/start`` evaluated for
anyone).  Nodes propose only version 2, and once a version 2 command has
been applied a version 1 command is refused (a node of the old version left
in the fleet cannot add records without tickets).

Why one module: rule 1.  Every decision about a guess is read here, top to
bottom, next to the transition table; the names the other layers share (the
statuses and result codes) are in :mod:`vault_raft.core.results`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from vault_raft import limits
from vault_raft.core import results as R
from vault_raft.core.results import Code
from vault_raft.errors import VaultRaftError

COMMAND_VERSION = 2
SNAPSHOT_VERSION = 2
LEGACY_VERSION = 1  # applied as written (see the module docstring), never proposed

# Policy constants (part of the replicated semantics: changing them changes
# the meaning of an existing log, so they are versioned with the commands).
ATTEMPT_TTL_MS = 120_000  # KE3 must arrive within this time of the counted KE2
PROOF_TTL_MS = 300_000  # a completed attempt authorises one change this long
MAX_ATTEMPTS_LIMIT = limits.MAX_ATTEMPTS_LIMIT
DEFAULT_MAX_ATTEMPTS = limits.DEFAULT_MAX_ATTEMPTS
USER_MIN, USER_MAX = 1, limits.RECORD_KEY_MAX  # a user id, maybe after "tenant\0"
ID_LEN = 16  # attempt ids and record versions
OPAQUE_RECORD_LEN = limits.OPAQUE_RECORD_LEN
SEALED_MAX = limits.SEALED_MAX
CRED_ID_LEN = 32  # credential identifier: the record's OPRF key is derived from it
NONCE_LEN = 16  # enrollment ticket nonce
TICKET_TTL_MS = 300_000  # an enroll/start ticket is good this long

# Record status (these and the result codes: vault_raft.core.results).
ABSENT, ACTIVE, DESTROYED = R.ABSENT, R.ACTIVE, R.DESTROYED

# Operations.
ENROLL = "enroll"
BEGIN_ATTEMPT = "begin_attempt"
COMPLETE_ATTEMPT = "complete_attempt"
CHANGE_SECRET = "change_secret"
CHANGE_CODE = "change_code"
DELETE = "delete"

# (status, op) -> name of the handler; anything else is refused.
TRANSITIONS: dict[tuple[str, str], str] = {
    (ABSENT, ENROLL): "_enroll",
    (DESTROYED, ENROLL): "_enroll",
    (ACTIVE, ENROLL): "_refuse_exists",
    (ABSENT, BEGIN_ATTEMPT): "_begin_unknown",
    (ACTIVE, BEGIN_ATTEMPT): "_begin",
    (DESTROYED, BEGIN_ATTEMPT): "_refuse_destroyed",
    (ACTIVE, COMPLETE_ATTEMPT): "_complete",
    (DESTROYED, COMPLETE_ATTEMPT): "_refuse_destroyed",
    (ACTIVE, CHANGE_SECRET): "_change_secret",
    (ACTIVE, CHANGE_CODE): "_change_code",
    (ACTIVE, DELETE): "_delete",
}


@dataclass
class Record:
    status: str
    version: bytes = b""  # record version: AD of the sealed secret
    opaque_record: bytes = b""
    sealed_secret: bytes = b""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    attempts_used: int = 0  # KE2s counted since the last success
    total_attempts: int = 0
    created_at: int = 0
    updated_at: int = 0
    last_success_at: int = 0
    open_attempts: dict = field(default_factory=dict)  # attempt id -> (begun_at, number)
    proof: list | None = None  # [attempt id, completed_at] of the last success
    cred_id: bytes = b""  # credential identifier: the OPRF key is derived from it

    def to_wire(self) -> list:
        return [self.status, self.version, self.opaque_record, self.sealed_secret,
                self.max_attempts, self.attempts_used, self.total_attempts, self.created_at,
                self.updated_at, self.last_success_at,
                [[k, v[0], v[1]] for k, v in sorted(self.open_attempts.items())], self.proof,
                self.cred_id]

    @classmethod
    def from_wire(cls, w: list, user: bytes) -> Record:
        """``w`` has 13 fields (snapshot version 2) or 12 (version 1: the
        credential identifier was the user id)."""
        if len(w) not in (12, 13):
            raise ValueError("record: expected 12 or 13 fields")
        r = cls(*w[:10])
        r.open_attempts = {k: (b, n) for k, b, n in w[10]}
        r.proof = list(w[11]) if w[11] is not None else None
        r.cred_id = w[12] if len(w) == 13 else (user if r.status == ACTIVE else b"")
        if not isinstance(r.cred_id, bytes):
            raise ValueError("record: credential identifier must be bytes")
        return r


class BadCommand(VaultRaftError):
    """Internal: the command is malformed (never escapes ``apply``)."""


def _bytes(cmd: dict, key: str, lo: int, hi: int) -> bytes:
    v = cmd.get(key)
    if not isinstance(v, bytes) or not lo <= len(v) <= hi:
        raise BadCommand(f"{key}: expected {lo}..{hi} bytes")
    return v


def _int(cmd: dict, key: str, lo: int, hi: int) -> int:
    v = cmd.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadCommand(f"{key}: expected an integer {lo}..{hi}")
    return v


def encode_command(op: str, **fields: Any) -> bytes:
    """Build a versioned msgpack command (used by nodes and tests)."""
    return msgpack.packb({"v": COMMAND_VERSION, "op": op, **fields}, use_bin_type=True)


class VaultState:
    """The replicated state: a map from user id to :class:`Record`, the
    machine's clock, and the enrollment tickets accepted and not yet expired."""

    def __init__(self) -> None:
        self.records: dict[bytes, Record] = {}
        self.applied = 0  # number of commands applied: a position in the log
        self.clock = 0  # the highest ``now`` applied (ms): never goes back
        self.format = LEGACY_VERSION  # COMMAND_VERSION once such a command was applied
        self.tickets: dict[bytes, int] = {}  # nonce -> expiry, until the clock passes it
        self._expiries: list[tuple[int, bytes]] = []  # heap of (expiry, nonce)
        self.changes: dict[bytes, int] = {}  # user -> ``applied`` at its last identity change

    # ------------------------------------------------------------- entry
    def apply(self, command: bytes) -> dict:
        self.applied += 1
        try:
            cmd = msgpack.unpackb(command, raw=False, strict_map_key=False)
            v = cmd.get("v") if isinstance(cmd, dict) else None
            if type(v) is not int or v not in (COMMAND_VERSION, LEGACY_VERSION):
                raise BadCommand("unknown command version")
            if v == LEGACY_VERSION and self.format != LEGACY_VERSION:
                raise BadCommand("a version 1 command after version 2 ones")
            op = cmd.get("op")
            user = _bytes(cmd, "user", USER_MIN, USER_MAX)
            now = _int(cmd, "now", 0, 2**62)
            if not isinstance(op, str) or op not in _ALL_OPS:
                raise BadCommand("unknown op")
            clock = max(self.clock, now)
            ticket = None
            if op in _TICKETED and v != LEGACY_VERSION:
                ticket = self._check_ticket(user, cmd, clock)
                if isinstance(ticket, Code):
                    self._advance(clock, v)
                    return R.refused(ticket)
            rec = self.records.get(user)
            status = rec.status if rec is not None else ABSENT
            handler = TRANSITIONS.get((status, op))
            if handler is None:
                res = R.refused(R.refusal_for(status))
            else:
                fn: Callable[[bytes, Record | None, dict, int], dict] = getattr(self, handler)
                res = fn(user, rec, cmd, now)  # raises BadCommand before changing anything
            self._advance(clock, v)  # only a well-formed command moves the clock
            if ticket is not None:  # single use, whatever the outcome
                self._use_ticket(*ticket)
            if (res["ok"] and op in _IDENTITY_OPS) or res.get("just_destroyed"):
                self._changed(user)
            return res
        except BadCommand as exc:
            return R.refused(Code.BAD_COMMAND, detail=str(exc))
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            return R.refused(Code.BAD_COMMAND, detail=type(exc).__name__)

    # ------------------------------------------------------------ tickets
    def _advance(self, clock: int, version: int) -> None:
        """Move the machine's clock forward and forget tickets that expired."""
        self.clock = clock
        self.format = max(self.format, version)
        while self._expiries and self._expiries[0][0] < self.clock:
            _, nonce = heapq.heappop(self._expiries)
            self.tickets.pop(nonce, None)

    def _changed(self, user: bytes) -> None:
        """``user``'s record changed identity: tickets issued before are stale."""
        self.changes[user] = self.applied

    def _check_ticket(self, user: bytes, cmd: dict, clock: int) -> tuple[bytes, int] | Code:
        """Validate a version 2 command's ticket fields; returns (nonce,
        expiry), or the refusal code.  Consumes nothing."""
        nonce = _bytes(cmd, "nonce", NONCE_LEN, NONCE_LEN)
        expiry = _int(cmd, "ticket_exp", 0, 2**62)
        issued = _int(cmd, "ticket_seq", 0, 2**62)
        _bytes(cmd, "cred_id", CRED_ID_LEN, CRED_ID_LEN)
        if expiry < clock:
            return Code.EXPIRED
        if nonce in self.tickets:
            return Code.REPLAYED
        if issued < self.changes.get(user, 0):
            return Code.STALE
        return nonce, expiry

    @staticmethod
    def _cred_id(user: bytes, cmd: dict) -> bytes:
        """The credential identifier a command gives a record: the ticket's
        (version 2), or the user id (version 1, as it was written)."""
        return user if cmd["v"] == LEGACY_VERSION else cmd["cred_id"]  # (v: checked, an int)

    def _use_ticket(self, nonce: bytes, expiry: int) -> None:
        self.tickets[nonce] = expiry
        heapq.heappush(self._expiries, (expiry, nonce))

    # ---------------------------------------------------------- handlers
    def _enroll(self, user: bytes, rec: Record | None, cmd: dict, now: int) -> dict:
        max_attempts = _int(cmd, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
        self.records[user] = Record(
            status=ACTIVE,
            version=_bytes(cmd, "version", ID_LEN, ID_LEN),
            opaque_record=_bytes(cmd, "opaque_record", OPAQUE_RECORD_LEN, OPAQUE_RECORD_LEN),
            sealed_secret=_bytes(cmd, "sealed_secret", 1, SEALED_MAX),
            max_attempts=max_attempts, created_at=now, updated_at=now,
            cred_id=self._cred_id(user, cmd))
        return R.done(Code.ENROLLED, max_attempts=max_attempts)

    def _refuse_exists(self, user, rec, cmd, now) -> dict:
        return R.refused(Code.EXISTS)

    def _refuse_destroyed(self, user, rec, cmd, now) -> dict:
        return R.refused(Code.DESTROYED)

    def _begin_unknown(self, user, rec, cmd, now) -> dict:
        _bytes(cmd, "attempt_id", ID_LEN, ID_LEN)
        return R.refused(Code.UNKNOWN)

    def _begin(self, user: bytes, rec: Record, cmd: dict, now: int) -> dict:
        attempt_id = _bytes(cmd, "attempt_id", ID_LEN, ID_LEN)
        if attempt_id in rec.open_attempts:
            raise BadCommand("attempt id reused")
        if rec.attempts_used >= rec.max_attempts:
            # The limit is exhausted: destroy for good, keep a tombstone.
            self.records[user] = Record(status=DESTROYED, max_attempts=rec.max_attempts,
                                        attempts_used=rec.attempts_used,
                                        total_attempts=rec.total_attempts,
                                        created_at=rec.created_at, updated_at=now)
            return R.refused(Code.DESTROYED, just_destroyed=True)
        rec.attempts_used += 1
        rec.total_attempts += 1
        rec.updated_at = now
        # Expired attempts can never complete; forget them (bounded state).
        rec.open_attempts = {k: v for k, v in rec.open_attempts.items()
                             if now - v[0] <= ATTEMPT_TTL_MS}
        rec.open_attempts[attempt_id] = (now, rec.attempts_used)
        return R.done(Code.COUNTED, attempt=rec.attempts_used,
                      attempts_left=rec.max_attempts - rec.attempts_used,
                      version=rec.version, opaque_record=rec.opaque_record,
                      cred_id=rec.cred_id)

    def _complete(self, user: bytes, rec: Record, cmd: dict, now: int) -> dict:
        attempt_id = _bytes(cmd, "attempt_id", ID_LEN, ID_LEN)
        version = _bytes(cmd, "version", ID_LEN, ID_LEN)
        opened = rec.open_attempts.get(attempt_id)
        if opened is None or version != rec.version or now - opened[0] > ATTEMPT_TTL_MS:
            return R.refused(Code.NO_ATTEMPT)
        failed = rec.attempts_used - 1
        rec.attempts_used = 0
        rec.open_attempts = {}
        rec.proof = [attempt_id, now]
        rec.last_success_at = now
        rec.updated_at = now
        return R.done(Code.RELEASED, sealed_secret=rec.sealed_secret,
                      version=rec.version, failed_attempts=failed,
                      max_attempts=rec.max_attempts)

    def _take_proof(self, rec: Record, cmd: dict, now: int) -> bool:
        attempt_id = _bytes(cmd, "attempt_id", ID_LEN, ID_LEN)
        if rec.proof is None or rec.proof[0] != attempt_id or now - rec.proof[1] > PROOF_TTL_MS:
            return False
        rec.proof = None  # one change per successful recovery
        return True

    def _change_secret(self, user, rec: Record, cmd, now) -> dict:
        version = _bytes(cmd, "version", ID_LEN, ID_LEN)
        sealed = _bytes(cmd, "sealed_secret", 1, SEALED_MAX)
        if not self._take_proof(rec, cmd, now):
            return R.refused(Code.NO_PROOF)
        rec.version, rec.sealed_secret, rec.updated_at = version, sealed, now
        return R.done(Code.CHANGED)

    def _change_code(self, user, rec: Record, cmd, now) -> dict:
        opaque_record = _bytes(cmd, "opaque_record", OPAQUE_RECORD_LEN, OPAQUE_RECORD_LEN)
        if not self._take_proof(rec, cmd, now):
            return R.refused(Code.NO_PROOF)
        if cmd["v"] != LEGACY_VERSION:  # a new code gets a new OPRF key
            rec.cred_id = cmd["cred_id"]
        rec.opaque_record, rec.updated_at = opaque_record, now
        rec.attempts_used, rec.open_attempts = 0, {}
        return R.done(Code.CHANGED)

    def _delete(self, user, rec: Record, cmd, now) -> dict:
        if not self._take_proof(rec, cmd, now):
            return R.refused(Code.NO_PROOF)
        del self.records[user]
        return R.done(Code.DELETED)

    # ------------------------------------------------------- inspection
    def summary(self, user: bytes) -> dict:
        """Read-only view for tests and operators (never used to decide a guess)."""
        rec = self.records.get(user)
        if rec is None:
            return {"status": ABSENT}
        return {"status": rec.status, "attempts_used": rec.attempts_used,
                "max_attempts": rec.max_attempts, "total_attempts": rec.total_attempts,
                "has_secret": bool(rec.sealed_secret)}

    def counts(self) -> dict:
        out = {ACTIVE: 0, DESTROYED: 0}
        for r in self.records.values():
            out[r.status] += 1
        return out

    # -------------------------------------------------------- snapshots
    def snapshot(self) -> bytes:
        return msgpack.packb({"v": SNAPSHOT_VERSION, "applied": self.applied,
                              "clock": self.clock, "format": self.format,
                              "tickets": sorted([n, e] for n, e in self.tickets.items()),
                              "changes": sorted([u, a] for u, a in self.changes.items()),
                              "records": [[u, r.to_wire()] for u, r in self.records.items()]},
                             use_bin_type=True)

    @classmethod
    def from_snapshot(cls, data: bytes) -> VaultState:
        """Raises ValueError on anything malformed.  Version 1 snapshots are
        read as they were written (see the module docstring)."""
        try:
            snap = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(snap, dict) or snap.get("v") not in (SNAPSHOT_VERSION,
                                                                   LEGACY_VERSION):
                raise ValueError("unknown snapshot version")
            st = cls()
            st.applied = _snap_int(snap["applied"])
            if snap["v"] == SNAPSHOT_VERSION:
                st.clock = _snap_int(snap["clock"])
                st.format = _snap_int(snap["format"])
                for nonce, expiry in snap["tickets"]:
                    if not isinstance(nonce, bytes):
                        raise ValueError("bad ticket in snapshot")
                    st._use_ticket(nonce, _snap_int(expiry))
                for user, at in snap["changes"]:
                    if not isinstance(user, bytes):
                        raise ValueError("bad change in snapshot")
                    st.changes[user] = _snap_int(at)
            for user, wire in snap["records"]:
                if not isinstance(user, bytes):
                    raise ValueError("bad user id in snapshot")
                st.records[user] = Record.from_wire(wire, user)
            return st
        except (KeyError, TypeError, IndexError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            raise ValueError(f"malformed snapshot: {exc}") from exc


_ALL_OPS = {ENROLL, BEGIN_ATTEMPT, COMPLETE_ATTEMPT, CHANGE_SECRET, CHANGE_CODE, DELETE}
_TICKETED = {ENROLL, CHANGE_CODE}  # carry an enroll/start ticket (version 2)
# After these succeed (and after a destruction), a ticket issued earlier is stale.
_IDENTITY_OPS = {ENROLL, CHANGE_CODE, DELETE}


def _snap_int(v) -> int:
    if type(v) is not int:
        raise ValueError("snapshot: expected an integer")
    return v

