"""The client's half of the API's OPAQUE flows: which message follows which,
and the request bodies that carry them.

The client (:mod:`vault_raft.client`), the chaos campaign's actors, the
bench's load generators and the tests run every enrollment, recovery and
change through these; each sends the bodies its own way and decides what a
refusal means.  The cryptography is :mod:`vault_raft.crypto.opaque`::

    reg = Registration(fleet, user, code)
    POST /v1/enroll/start   reg.start_body()           -> reply: reg.finish(reply)
    POST /v1/enroll/finish  reg.enroll_body(secret, max_attempts)

    login = Login(fleet, user, code)
    POST /v1/recover/start  login.start_body()         -> reply: login.finish(reply)
    POST /v1/recover/finish login.finish_body()        -> reply: login.open_release(reply)
    POST /v1/manage         login.manage_body(op, payload[, ticket])

``finish`` pins the fleet's OPAQUE server key: a reply made with another key
raises :class:`~vault_raft.crypto.errors.OpaqueError` (for a login, also the
sign of a wrong code).
"""

from __future__ import annotations

from typing import Protocol

from vault_raft.api import binding as P
from vault_raft.crypto import opaque
from vault_raft.crypto.ksf import KSF


class FleetKeys(Protocol):
    """What a flow needs of a fleet (:class:`vault_raft.fleet.config.FleetInfo` has it)."""

    @property
    def fleet_id(self) -> str: ...

    @property
    def context(self) -> bytes: ...

    @property
    def opaque_server_public_key(self) -> bytes: ...

    @property
    def enroll_public_key(self) -> bytes: ...

    @property
    def ksf(self) -> KSF: ...


# ---------------------------------------------------------------- bodies

def upload(fleet: FleetKeys, user: bytes, purpose: bytes, binding: bytes,
           secret: bytes) -> bytes:
    """A secret sealed to the fleet's enrollment key for one request
    (``binding``: the enroll/start nonce, or the recovery token)."""
    return P.seal_upload(fleet.enroll_public_key, fleet.fleet_id, user, purpose, binding,
                         secret)


def enroll_start_body(user: bytes, request: bytes, purpose: str | None = None) -> dict:
    """``/v1/enroll/start`` (``purpose`` absent: the node takes "enroll")."""
    body: dict = {"user": user, "request": request}
    if purpose is not None:
        body["purpose"] = purpose
    return body


def enroll_finish_body(fleet: FleetKeys, user: bytes, record: bytes, start: dict,
                       secret: bytes, max_attempts: int) -> dict:
    """``/v1/enroll/finish`` for ``record``, with the ticket and nonce of the
    enroll/start reply ``start``."""
    return {"user": user, "record": record, "ticket": start["ticket"],
            "upload": upload(fleet, user, b"enroll", start["nonce"], secret),
            "max_attempts": max_attempts}


def recover_start_body(user: bytes, ke1: bytes) -> dict:
    return {"user": user, "ke1": ke1}


def recover_finish_body(user: bytes, token: bytes, ke3: bytes) -> dict:
    return {"user": user, "token": token, "ke3": ke3}


def manage_body(user: bytes, session_key: bytes, token: bytes, op: str, payload: bytes,
                ticket: bytes = b"") -> dict:
    """``/v1/manage``: ``op`` proven with the session key of a completed
    recovery (``ticket``: the enroll/start ticket of a change_code)."""
    body = {"user": user, "op": op, "token": token, "payload": payload,
            "proof": P.manage_proof(session_key, op, user, token, payload, ticket)}
    if ticket:
        body["ticket"] = ticket
    return body


# ----------------------------------------------------------------- flows

class Registration:
    """OPAQUE registration of ``code`` for ``user``: the record a new
    enrollment (or a change of code) uploads."""

    def __init__(self, fleet: FleetKeys, user: bytes, code: bytes, purpose: str | None = None):
        self.fleet, self.user, self.purpose = fleet, user, purpose
        self._state, self.request = opaque.ClientRegistration.start(code, ksf=fleet.ksf)
        self.record: bytes | None = None
        self.start: dict | None = None  # the enroll/start reply (ticket, nonce)

    def start_body(self) -> dict:
        return enroll_start_body(self.user, self.request, self.purpose)

    def finish(self, reply: dict) -> bytes:
        """The record, from the enroll/start reply (OpaqueError: not the fleet's
        server key; KeyError: no response)."""
        self.record = self._state.finish(
            reply["response"], expected_server_public_key=self.fleet.opaque_server_public_key
        ).record
        self.start = reply
        return self.record

    @property
    def ticket(self) -> bytes:
        assert self.start is not None, "finish() first"
        return self.start["ticket"]

    def enroll_body(self, secret: bytes, max_attempts: int) -> dict:
        assert self.record is not None and self.start is not None, "finish() first"
        return enroll_finish_body(self.fleet, self.user, self.record, self.start, secret,
                                  max_attempts)


class Login:
    """An OPAQUE login (a recovery) of ``user`` with ``code``; ``ksf``
    overrides the fleet's (the bench times the cheap one)."""

    def __init__(self, fleet: FleetKeys, user: bytes, code: bytes, ksf: KSF | None = None):
        self.fleet, self.user = fleet, user
        self._state, self.ke1 = opaque.ClientLogin.start(code, ksf=ksf or fleet.ksf,
                                                         context=fleet.context)
        self.done: opaque.LoginResult | None = None
        self._token: bytes | None = None

    def start_body(self) -> dict:
        return recover_start_body(self.user, self.ke1)

    def finish(self, reply: dict) -> opaque.LoginResult:
        """KE3 from the recover/start reply's KE2; OpaqueError on a wrong code
        (or a KE2 not from the fleet's server key)."""
        self.done = self._state.finish(
            reply["ke2"], expected_server_public_key=self.fleet.opaque_server_public_key)
        self._token = reply["token"]
        return self.done

    @property
    def token(self) -> bytes:
        """The recovery token of the recover/start reply."""
        assert self._token is not None, "finish() first"
        return self._token

    @property
    def session_key(self) -> bytes:
        assert self.done is not None, "finish() first"
        return self.done.session_key

    def finish_body(self) -> dict:
        assert self.done is not None, "finish() first"
        return recover_finish_body(self.user, self.token, self.done.ke3)

    def open_release(self, reply: dict) -> bytes:
        """The secret in the recover/finish reply (SealError: not for this login)."""
        return P.open_release(self.session_key, self.user, self.token, reply["secret_box"])

    def manage_body(self, op: str, payload: bytes, ticket: bytes = b"") -> dict:
        return manage_body(self.user, self.session_key, self.token, op, payload, ticket)

    def change_secret_body(self, secret: bytes) -> dict:
        return self.manage_body("change_secret", upload(self.fleet, self.user, b"change_secret",
                                                        self.token, secret))
