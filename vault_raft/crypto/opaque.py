"""OPAQUE-3DH (RFC 9807), ristretto255-SHA512: the API.

Client side (runs on the user's device; the password never leaves it)::

    reg, request = ClientRegistration.start(password)
    response = <server: server_registration_response(setup, request, user_id)>
    result = reg.finish(response)           # result.record goes to the server
    login, ke1 = ClientLogin.start(password)
    ke2 = <server: state, ke2 = server_login_start(setup, record, ke1, user_id)>
    done = login.finish(ke2)                # OpaqueError on a wrong password
    <server: server_login_finish(state, done.ke3)>  # OpaqueError on a bad KE3

All inputs that come from the other party are validated; any problem raises
:class:`~vault_raft.crypto.errors.OpaqueError` and nothing else.  Identities
default to the public keys (RFC 9807 section 4.1.2); ``context`` binds the
key exchange to an application (both sides must agree on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vault_raft import limits
from vault_raft.crypto import _opaque_core as core
from vault_raft.crypto import group
from vault_raft.crypto.errors import OpaqueError
from vault_raft.crypto.ksf import DEFAULT_KSF, KSF

DEFAULT_CONTEXT = b"vault-raft OPAQUE v1"
KE1_LEN = core.KE1_LEN
KE2_LEN = core.KE2_LEN
KE3_LEN = core.KE3_LEN
RECORD_LEN = core.RECORD_LEN
REG_REQUEST_LEN = core.REG_REQUEST_LEN
REG_RESPONSE_LEN = core.REG_RESPONSE_LEN

__all__ = [
    "OpaqueError", "KSF", "ServerSetup", "ClientRegistration", "RegistrationResult",
    "ClientLogin", "LoginResult", "ServerLogin", "server_registration_response",
    "server_login_start", "server_login_finish", "DEFAULT_CONTEXT",
]


def _password(password: bytes) -> bytes:
    n = limits.CODE_MAX
    if not isinstance(password, (bytes, bytearray)) or not 1 <= len(password) <= n:
        raise OpaqueError(f"password must be 1..{n} bytes")
    return bytes(password)


def _ident(value: bytes | None, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray)) or len(value) > 0xFFFF:
        raise OpaqueError(f"{what} must be bytes of at most 65535")
    return bytes(value)


def _context(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) > 0xFFFF:
        raise OpaqueError("context must be bytes of at most 65535")
    return bytes(value)


def _cred_id(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or not 1 <= len(value) <= 0xFFFF:
        raise OpaqueError("credential identifier must be 1..65535 bytes")
    return bytes(value)


# ----------------------------------------------------------------- server

@dataclass(frozen=True, repr=False)
class ServerSetup:
    """The server's long-term OPAQUE secrets: OPRF seed and AKE key pair."""

    oprf_seed: bytes
    private_key: bytes
    public_key: bytes

    def __repr__(self) -> str:  # never print secrets
        return f"ServerSetup(public_key={self.public_key.hex()})"

    @classmethod
    def generate(cls) -> ServerSetup:
        sk, pk = core.derive_dh_key_pair(os.urandom(core.Nseed))
        return cls(os.urandom(core.Nh), sk, pk)

    def to_bytes(self) -> bytes:
        return self.oprf_seed + self.private_key + self.public_key

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerSetup:
        data = core._check_len(data, core.SERVER_SETUP_LEN, "server setup")
        seed, sk, pk = data[:core.Nh], data[core.Nh:core.Nh + core.Nsk], data[core.Nh + core.Nsk:]
        group.check_scalar(sk, "server private key")
        if group.scalar_mult_base(sk) != group.check_element(pk, "server public key"):
            raise OpaqueError("server setup: public key does not match private key")
        return cls(seed, sk, pk)

    def fake_credential(self, user: bytes) -> tuple[bytes, bytes]:
        """(credential identifier, registration record) an unknown ``user`` is
        answered with (RFC 9807 section 10.9).

        Both are derived from the OPRF seed and the user id in one HKDF
        expansion, so repeated probes of the same unknown user see the same
        fake credential, as they would a real one.  The identifier lies in a
        different domain from any a real record can have (random, or the user
        id for version 1 records), so a probe never evaluates a real record's
        OPRF key.  The record's client key is the one-way map of uniform bytes
        to the group (about the cost of the element check a real record gets)
        rather than a scalar multiplication, so a fake KE2 costs what a real
        one does.
        """
        m = core._expand(self.oprf_seed, _cred_id(user) + b"vault-raft FakeCredential",
                         core.Nseed + 64 + core.Nh)
        fake_pk = group.element_from_uniform(m[core.Nseed:core.Nseed + 64])
        return m[:core.Nseed], core.fake_record(fake_pk, m[core.Nseed + 64:])


def server_registration_response(setup: ServerSetup, request: bytes,
                                 credential_identifier: bytes) -> bytes:
    return core.registration_response(setup.oprf_seed, setup.public_key, request,
                                      _cred_id(credential_identifier))


def check_registration_record(record: bytes) -> bytes:
    """Validate a client's upload before storing it."""
    return core.check_record(record)


@dataclass(frozen=True, repr=False)
class ServerLogin:
    """Server state between KE2 and KE3 (secret: seal it if it leaves memory)."""

    _state: core.ServerLoginState

    def to_bytes(self) -> bytes:
        return self._state.expected_client_mac + self._state.session_key

    @property
    def session_key(self) -> bytes:
        """The session key this login will have.  Use it only to check
        messages from a client whose KE3 was verified for this state."""
        return self._state.session_key

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerLogin:
        data = core._check_len(data, core.Nm + core.Nx, "server login state")
        return cls(core.ServerLoginState(data[:core.Nm], data[core.Nm:]))


def server_login_start(setup: ServerSetup, record: bytes | None, ke1: bytes,
                       credential_identifier: bytes, *, context: bytes = DEFAULT_CONTEXT,
                       server_identity: bytes | None = None,
                       client_identity: bytes | None = None) -> tuple[ServerLogin, bytes]:
    """Answer KE1 with KE2.  ``record=None`` means the user is unknown and
    ``credential_identifier`` is then the user id: a fake response of
    identical length and cost is produced from :meth:`ServerSetup.fake_credential`
    (the login can then never finish)."""
    cred = _cred_id(credential_identifier)
    # Both paths do the same work, so that timing does not tell an unknown user:
    # one fake-credential derivation (used, or discarded), one record check.
    fake_cred, fake_rec = setup.fake_credential(cred)
    if record is None:
        cred, rec = fake_cred, core.check_record(fake_rec)
    else:
        rec = core.check_record(record)
    state, ke2 = core.server_respond(
        oprf_seed=setup.oprf_seed, server_sk=setup.private_key, server_pk=setup.public_key,
        record=rec, credential_identifier=cred, ke1=ke1, context=_context(context),
        server_identity=_ident(server_identity, "server identity"),
        client_identity=_ident(client_identity, "client identity"),
        masking_nonce=os.urandom(core.Nn), server_nonce=os.urandom(core.Nn),
        server_keyshare_seed=os.urandom(core.Nseed))
    return ServerLogin(state), ke2


def server_login_finish(state: ServerLogin, ke3: bytes) -> bytes:
    """Verify KE3; returns the session key or raises OpaqueError."""
    return core.server_finish(state._state, ke3)


# ----------------------------------------------------------------- client

@dataclass(frozen=True)
class RegistrationResult:
    record: bytes  # upload to the server
    export_key: bytes  # client-only key material (never sent)


@dataclass(frozen=True, repr=False)
class ClientRegistration:
    _password: bytes
    _blind: bytes
    ksf: KSF

    @classmethod
    def start(cls, password: bytes, *, ksf: KSF = DEFAULT_KSF) -> tuple[ClientRegistration, bytes]:
        pw = _password(password)
        blind = group.random_scalar()
        return cls(pw, blind, ksf), core.registration_request(pw, blind)

    def finish(self, response: bytes, *, server_identity: bytes | None = None,
               client_identity: bytes | None = None,
               expected_server_public_key: bytes | None = None) -> RegistrationResult:
        """Build the record; ``expected_server_public_key`` pins the server
        key the client trusts (strongly recommended)."""
        if expected_server_public_key is not None and (
                len(response) != core.REG_RESPONSE_LEN
                or response[core.Noe:] != expected_server_public_key):
            raise OpaqueError("registration response: unexpected server public key")
        record, export_key = core.registration_finalize(
            self._password, self._blind, response, self.ksf, os.urandom(core.Nn),
            _ident(server_identity, "server identity"), _ident(client_identity, "client identity"))
        return RegistrationResult(record, export_key)


@dataclass(frozen=True)
class LoginResult:
    ke3: bytes  # send to the server
    session_key: bytes
    export_key: bytes
    server_public_key: bytes


@dataclass(frozen=True, repr=False)
class ClientLogin:
    _state: core.ClientLoginState
    ksf: KSF
    context: bytes

    @classmethod
    def start(cls, password: bytes, *, ksf: KSF = DEFAULT_KSF,
              context: bytes = DEFAULT_CONTEXT) -> tuple[ClientLogin, bytes]:
        state = core.client_start(_password(password), group.random_scalar(),
                                  os.urandom(core.Nn), os.urandom(core.Nseed))
        return cls(state, ksf, _context(context)), state.ke1

    def finish(self, ke2: bytes, *, server_identity: bytes | None = None,
               client_identity: bytes | None = None,
               expected_server_public_key: bytes | None = None) -> LoginResult:
        """Raises OpaqueError on a wrong password or an altered/foreign KE2."""
        ke3, session_key, export_key, server_pk = core.client_finish(
            self._state, ke2, self.ksf, self.context,
            _ident(server_identity, "server identity"), _ident(client_identity, "client identity"))
        if expected_server_public_key is not None and server_pk != expected_server_public_key:
            raise OpaqueError("KE2 authenticated a different server public key than expected")
        return LoginResult(ke3, session_key, export_key, server_pk)
