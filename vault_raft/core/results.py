"""What the vault's state machine answers, as names: the record statuses and
the result codes of :meth:`vault_raft.core.machine.VaultState.apply`.

A result is a map ``{"ok": bool, "code": Code, ...fields}`` (:func:`done`,
:func:`refused`).  The node turns it into an HTTP reply, the simulation and
the chaos campaign into history entries, and the client reads the node's
replies: each names the codes from here.  :class:`Code` is a ``StrEnum``: a
code is its string on the wire, in msgpack, JSON and logs.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

# ------------------------------------------------------------- record statuses
ABSENT = "absent"  # no record (never enrolled, or deleted by its owner)
ACTIVE = "active"
DESTROYED = "destroyed"  # guess limit exhausted: tombstone only


class Code(StrEnum):
    """A command's outcome."""
    # done
    ENROLLED = "enrolled"  # enroll: the record is active
    COUNTED = "counted"  # begin_attempt: the guess is counted (KE2 may follow)
    RELEASED = "released"  # complete_attempt: the secret may be released
    CHANGED = "changed"  # change_secret, change_code
    DELETED = "deleted"  # delete
    # refused (nothing changed, except a tombstone on the last allowed guess)
    EXISTS = "exists"  # enroll over an active record
    DESTROYED = "destroyed"  # the record is a tombstone (or became one just now)
    UNKNOWN = "unknown"  # no record: a guess is committed and answered with a fake KE2
    REFUSED = "refused"  # the operation does not apply to an active record
    NO_ATTEMPT = "no_attempt"  # complete_attempt without a matching counted attempt
    NO_PROOF = "no_proof"  # a change without a fresh completed attempt
    REPLAYED = "replayed"  # the enroll/start ticket was used already
    STALE = "stale"  # the record changed after the ticket was issued
    EXPIRED = "expired"  # the ticket expired
    BAD_COMMAND = "bad_command"  # malformed: changes nothing, not even the clock


#: Refusals of an enroll/start ticket (the node answers each its own way).
TICKET_REFUSALS = frozenset({Code.REPLAYED, Code.STALE, Code.EXPIRED})
#: The outcomes of a guess the node counts by name (any other is "refused").
GUESS_OUTCOMES = frozenset({Code.COUNTED, Code.UNKNOWN, Code.DESTROYED})


def done(code: Code, **fields: Any) -> dict:
    return {"ok": True, "code": code, **fields}


def refused(code: Code, **fields: Any) -> dict:
    return {"ok": False, "code": code, **fields}


def refusal_for(status: str) -> Code:
    """The refusal of an operation that a record in ``status`` does not allow."""
    return {ABSENT: Code.UNKNOWN, DESTROYED: Code.DESTROYED, ACTIVE: Code.REFUSED}[status]


def code_of(result: dict) -> Code | str | None:
    """A result's code (None if it has none)."""
    return result.get("code")
