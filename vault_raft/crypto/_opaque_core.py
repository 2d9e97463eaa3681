"""OPAQUE-3DH (RFC 9807), suite ristretto255-SHA512: the deterministic core.

Every function here takes its randomness (blinds, nonces, key-share seeds)
as arguments, so the RFC test vectors can be replayed byte for byte.  This
module is *not* the API: applications use :mod:`vault_raft.crypto.opaque`,
which draws the randomness from the OS and hides these injection points.

Section numbers refer to RFC 9807.  Wire formats (all fixed length):

=====================  =========================================  =====
message                fields                                     bytes
=====================  =========================================  =====
RegistrationRequest    blinded_message                            32
RegistrationResponse   evaluated_message, server_public_key       64
RegistrationRecord     client_public_key, masking_key, envelope   192
KE1                    blinded_message, client_nonce, client_pk   96
KE2                    evaluated, masking_nonce, masked_response,
                       server_nonce, server_keyshare, server_mac  320
KE3                    client_mac                                 64
=====================  =========================================  =====
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from vault_raft.crypto import group, oprf
from vault_raft.crypto.errors import OpaqueError
from vault_raft.crypto.ksf import KSF

Nn = 32  # nonce
Nseed = 32
Nh = 64  # hash
Nm = 64  # MAC
Nx = 64  # KDF extract output
Npk = 32
Nsk = 32
Noe = 32
Nok = 32
Ne = Nn + Nm  # envelope
RECORD_LEN = Npk + Nh + Ne
KE1_LEN = Noe + Nn + Npk
KE2_LEN = Noe + Nn + (Npk + Ne) + Nn + Npk + Nm
KE3_LEN = Nm
REG_REQUEST_LEN = Noe
REG_RESPONSE_LEN = Noe + Npk
SERVER_SETUP_LEN = Nh + Nsk + Npk  # oprf_seed, server sk, server pk

_SHA512 = hashes.SHA512()


# --------------------------------------------------------------- primitives

def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(_SHA512, length, info).derive(prk)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return HKDF.extract(_SHA512, salt or None, ikm)


def _mac(key: bytes, msg: bytes) -> bytes:
    h = hmac.HMAC(key, _SHA512)
    h.update(msg)
    return h.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of equal-length strings (as one integer operation)."""
    if len(a) != len(b):
        raise OpaqueError("masking pad and data differ in length")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _hash(msg: bytes) -> bytes:
    return hashlib.sha512(msg).digest()


def _i2osp2(n: int) -> bytes:
    if n > 0xFFFF:
        raise OpaqueError("field longer than 65535 bytes")
    return n.to_bytes(2, "big")


def _expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"OPAQUE-" + label
    custom = _i2osp2(length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    return _expand(secret, custom, length)


def _derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return _expand_label(secret, label, transcript_hash, Nx)


def derive_dh_key_pair(seed: bytes) -> tuple[bytes, bytes]:
    """DeriveDiffieHellmanKeyPair (section 6.4.1): OPRF DeriveKeyPair."""
    return oprf.derive_key_pair(seed, b"OPAQUE-DeriveDiffieHellmanKeyPair")


def _oprf_key(oprf_seed: bytes, credential_identifier: bytes) -> bytes:
    seed = _expand(oprf_seed, credential_identifier + b"OprfKey", Nok)
    return oprf.derive_secret_key(seed, b"OPAQUE-DeriveKeyPair")


def _check_len(data: bytes, n: int, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray)) or len(data) != n:
        raise OpaqueError(f"{what}: expected {n} bytes")
    return bytes(data)


# ------------------------------------------------------------ envelope (4)

def _cleartext_credentials(server_pk: bytes, client_pk: bytes,
                           server_identity: bytes | None, client_identity: bytes | None) -> bytes:
    sid = server_pk if server_identity is None else server_identity
    cid = client_pk if client_identity is None else client_identity
    return server_pk + _i2osp2(len(sid)) + sid + _i2osp2(len(cid)) + cid


def _randomized_password(password: bytes, blind_scalar: bytes, evaluated: bytes, ksf: KSF) -> bytes:
    oprf_output = oprf.finalize(password, blind_scalar, evaluated)
    stretched = ksf.stretch(oprf_output)
    return _extract(b"", oprf_output + stretched)


def _envelope(randomized_password: bytes, envelope_nonce: bytes, server_pk: bytes,
              server_identity: bytes | None, client_identity: bytes | None):
    """What Store and Recover (section 4.1) both derive: the expected auth tag,
    the export key and the client key pair."""
    auth_key = _expand(randomized_password, envelope_nonce + b"AuthKey", Nh)
    export_key = _expand(randomized_password, envelope_nonce + b"ExportKey", Nh)
    seed = _expand(randomized_password, envelope_nonce + b"PrivateKey", Nseed)
    client_sk, client_pk = derive_dh_key_pair(seed)
    cleartext = _cleartext_credentials(server_pk, client_pk, server_identity, client_identity)
    return _mac(auth_key, envelope_nonce + cleartext), export_key, client_sk, client_pk


def _store(randomized_password: bytes, server_pk: bytes, server_identity: bytes | None,
           client_identity: bytes | None, envelope_nonce: bytes):
    masking_key = _expand(randomized_password, b"MaskingKey", Nh)
    auth_tag, export_key, _, client_pk = _envelope(randomized_password, envelope_nonce,
                                                   server_pk, server_identity, client_identity)
    return envelope_nonce + auth_tag, client_pk, masking_key, export_key


def _recover(randomized_password: bytes, server_pk: bytes, envelope: bytes,
             server_identity: bytes | None, client_identity: bytes | None):
    envelope_nonce, auth_tag = envelope[:Nn], envelope[Nn:]
    expected, export_key, client_sk, client_pk = _envelope(
        randomized_password, envelope_nonce, server_pk, server_identity, client_identity)
    if not constant_time.bytes_eq(expected, auth_tag):
        raise OpaqueError("envelope recovery failed (wrong password or altered response)")
    return client_sk, client_pk, export_key


# ------------------------------------------------------------ registration

def registration_request(password: bytes, blind_scalar: bytes) -> bytes:
    return oprf.blind(password, blind_scalar)


def registration_response(oprf_seed: bytes, server_pk: bytes, request: bytes,
                          credential_identifier: bytes) -> bytes:
    blinded = group.check_element(_check_len(request, REG_REQUEST_LEN, "registration request"),
                                  "blinded element")
    evaluated = oprf.blind_evaluate(_oprf_key(oprf_seed, credential_identifier), blinded)
    return evaluated + server_pk


def registration_finalize(password: bytes, blind_scalar: bytes, response: bytes, ksf: KSF,
                          envelope_nonce: bytes, server_identity: bytes | None = None,
                          client_identity: bytes | None = None) -> tuple[bytes, bytes]:
    """Returns (RegistrationRecord bytes, export_key)."""
    response = _check_len(response, REG_RESPONSE_LEN, "registration response")
    evaluated = group.check_element(response[:Noe], "evaluated element")
    server_pk = group.check_element(response[Noe:], "server public key")
    rwd = _randomized_password(password, blind_scalar, evaluated, ksf)
    envelope, client_pk, masking_key, export_key = _store(
        rwd, server_pk, server_identity, client_identity, envelope_nonce)
    return client_pk + masking_key + envelope, export_key


def check_record(record: bytes) -> bytes:
    """Validate a RegistrationRecord uploaded by a client."""
    record = _check_len(record, RECORD_LEN, "registration record")
    group.check_element(record[:Npk], "client public key")
    return record


# ------------------------------------------------------------------- login

@dataclass(frozen=True)
class ClientLoginState:
    password: bytes
    blind: bytes
    client_secret: bytes  # ephemeral key-share private key
    ke1: bytes


@dataclass(frozen=True)
class ServerLoginState:
    expected_client_mac: bytes
    session_key: bytes


def client_start(password: bytes, blind_scalar: bytes, client_nonce: bytes,
                 client_keyshare_seed: bytes) -> ClientLoginState:
    blinded = oprf.blind(password, blind_scalar)
    client_secret, client_keyshare = derive_dh_key_pair(client_keyshare_seed)
    ke1 = blinded + client_nonce + client_keyshare
    return ClientLoginState(password, blind_scalar, client_secret, ke1)


def _preamble(client_identity: bytes, ke1: bytes, server_identity: bytes,
              credential_response: bytes, server_nonce: bytes, server_keyshare: bytes,
              context: bytes) -> bytes:
    return (b"OPAQUEv1-" + _i2osp2(len(context)) + context
            + _i2osp2(len(client_identity)) + client_identity + ke1
            + _i2osp2(len(server_identity)) + server_identity
            + credential_response + server_nonce + server_keyshare)


def _derive_keys(ikm: bytes, preamble: bytes) -> tuple[bytes, bytes, bytes]:
    prk = _extract(b"", ikm)
    transcript = _hash(preamble)
    handshake_secret = _derive_secret(prk, b"HandshakeSecret", transcript)
    session_key = _derive_secret(prk, b"SessionKey", transcript)
    km2 = _derive_secret(handshake_secret, b"ServerMAC", b"")
    km3 = _derive_secret(handshake_secret, b"ClientMAC", b"")
    return km2, km3, session_key


def server_respond(*, oprf_seed: bytes, server_sk: bytes, server_pk: bytes, record: bytes,
                   credential_identifier: bytes, ke1: bytes, context: bytes,
                   server_identity: bytes | None, client_identity: bytes | None,
                   masking_nonce: bytes, server_nonce: bytes,
                   server_keyshare_seed: bytes) -> tuple[ServerLoginState, bytes]:
    """CreateCredentialResponse + AuthServerRespond (sections 5.3.1, 6.4.3).

    ``record`` is a real RegistrationRecord or a fake one (section 10.9); the
    computation is identical, so the output has the same shape and cost.
    """
    ke1 = _check_len(ke1, KE1_LEN, "KE1")
    blinded = group.check_element(ke1[:Noe], "KE1 blinded element")
    client_keyshare = group.check_element(ke1[Noe + Nn:], "KE1 client key share")
    record = _check_len(record, RECORD_LEN, "registration record")
    client_pk = record[:Npk]
    masking_key = record[Npk:Npk + Nh]
    envelope = record[Npk + Nh:]

    evaluated = oprf.blind_evaluate(_oprf_key(oprf_seed, credential_identifier), blinded)
    pad = _expand(masking_key, masking_nonce + b"CredentialResponsePad", Npk + Ne)
    masked = _xor(pad, server_pk + envelope)
    credential_response = evaluated + masking_nonce + masked

    server_secret, server_keyshare = derive_dh_key_pair(server_keyshare_seed)
    sid = server_pk if server_identity is None else server_identity
    cid = client_pk if client_identity is None else client_identity
    preamble = _preamble(cid, ke1, sid, credential_response, server_nonce, server_keyshare, context)
    dh1 = group.scalar_mult(server_secret, client_keyshare)
    dh2 = group.scalar_mult(server_sk, client_keyshare)
    dh3 = group.scalar_mult(server_secret, group.check_element(client_pk, "client public key"))
    km2, km3, session_key = _derive_keys(dh1 + dh2 + dh3, preamble)
    server_mac = _mac(km2, _hash(preamble))
    expected_client_mac = _mac(km3, _hash(preamble + server_mac))
    ke2 = credential_response + server_nonce + server_keyshare + server_mac
    return ServerLoginState(expected_client_mac, session_key), ke2


def client_finish(state: ClientLoginState, ke2: bytes, ksf: KSF, context: bytes,
                  server_identity: bytes | None,
                  client_identity: bytes | None) -> tuple[bytes, bytes, bytes, bytes]:
    """RecoverCredentials + AuthClientFinalize.

    Returns (KE3, session_key, export_key, server_public_key); the server key
    is the one the envelope authenticated."""
    ke2 = _check_len(ke2, KE2_LEN, "KE2")
    evaluated = group.check_element(ke2[:Noe], "KE2 evaluated element")
    masking_nonce = ke2[Noe:Noe + Nn]
    masked = ke2[Noe + Nn:Noe + Nn + Npk + Ne]
    credential_response = ke2[:Noe + Nn + Npk + Ne]
    off = Noe + Nn + Npk + Ne
    server_nonce = ke2[off:off + Nn]
    server_keyshare = group.check_element(ke2[off + Nn:off + Nn + Npk], "KE2 server key share")
    server_mac = ke2[off + Nn + Npk:]

    rwd = _randomized_password(state.password, state.blind, evaluated, ksf)
    masking_key = _expand(rwd, b"MaskingKey", Nh)
    pad = _expand(masking_key, masking_nonce + b"CredentialResponsePad", Npk + Ne)
    unmasked = _xor(pad, masked)
    server_pk, envelope = unmasked[:Npk], unmasked[Npk:]
    try:
        server_pk = group.check_element(server_pk, "server public key")
    except OpaqueError:
        # A wrong password unmasks garbage: report it as the envelope failure
        # it is, without saying which byte gave it away.
        raise OpaqueError("envelope recovery failed (wrong password or altered response)") from None
    client_sk, client_pk, export_key = _recover(rwd, server_pk, envelope, server_identity,
                                                client_identity)

    sid = server_pk if server_identity is None else server_identity
    cid = client_pk if client_identity is None else client_identity
    preamble = _preamble(cid, state.ke1, sid, credential_response, server_nonce, server_keyshare,
                         context)
    dh1 = group.scalar_mult(state.client_secret, server_keyshare)
    dh2 = group.scalar_mult(state.client_secret, server_pk)
    dh3 = group.scalar_mult(client_sk, server_keyshare)
    km2, km3, session_key = _derive_keys(dh1 + dh2 + dh3, preamble)
    expected_server_mac = _mac(km2, _hash(preamble))
    if not constant_time.bytes_eq(expected_server_mac, server_mac):
        raise OpaqueError("server MAC did not verify (KE2 altered or wrong server)")
    client_mac = _mac(km3, _hash(preamble + expected_server_mac))
    return client_mac, session_key, export_key, server_pk


def server_finish(state: ServerLoginState, ke3: bytes) -> bytes:
    ke3 = _check_len(ke3, KE3_LEN, "KE3")
    if not constant_time.bytes_eq(state.expected_client_mac, ke3):
        raise OpaqueError("client MAC did not verify (KE3 altered or wrong password)")
    return state.session_key


def fake_record(client_pk: bytes, masking_key: bytes) -> bytes:
    """The fake RegistrationRecord of section 10.9: random key and masking
    key, an all-zero envelope."""
    return client_pk + masking_key + bytes(Ne)
