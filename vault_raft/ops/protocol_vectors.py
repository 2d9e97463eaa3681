"""Conformance vectors of the vault-raft protocol v1 (``docs/protocol.md``).

Every key and every random value is fixed (derived from labelled SHA-512
of a constant), and every message is computed by the same code the client
and the nodes run: the OPAQUE core with its randomness injected
(:mod:`vault_raft.crypto._opaque_core`), :func:`~vault_raft.crypto.seal.seal_with_nonce`,
the bindings of :mod:`vault_raft.api.binding`, and the trust formats of
:mod:`vault_raft.fleet`.  So the file is the same on every run, byte for
byte, with one exception: HPKE encapsulation draws its ephemeral key inside
``cryptography`` and cannot be given one.  The two HPKE uploads are
therefore kept from the previous file whenever they still open, under the
vector's recipient key and ``info``, to the vector's plaintext (else they are
sealed anew, and the file changes).

    python -m vault_raft.ops.protocol_vectors --out docs/vectors/protocol-v1.json
    python -m vault_raft.ops.protocol_vectors --check   # exit 1 if the file is not what this makes

``tests/test_protocol_vectors.py`` regenerates the file and compares it byte for
byte; ``tests/independent/`` checks every vector with an implementation written
from ``docs/protocol.md`` alone.  The fixed inputs are made in
:mod:`vault_raft.ops.vector_inputs`, the trust vectors in
:mod:`vault_raft.ops.vector_trust`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from vault_raft.api import binding as P
from vault_raft.crypto import _opaque_core as core
from vault_raft.crypto import seal as S
from vault_raft.crypto.errors import OpaqueError
from vault_raft.crypto.ksf import DEFAULT_KSF
from vault_raft.fleet import tenants as T
from vault_raft.fleet.config import opaque_context
from vault_raft.ops.vector_inputs import (
    T0,
    T0_MS,
    channel_ca_der,
    ed25519_key,
    ed_priv,
    ed_pub,
    fixed,
    fixed_scalar,
    hexed,
    kept_upload,
)
from vault_raft.ops.vector_trust import trust_vectors
from vault_raft.storage.files import atomic_write

PROTOCOL = "vault-raft protocol v1"
FORMAT = 1  # of this file
# vault_raft/ops/ -> the repository, whose docs/vectors/ holds the file
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PATH = os.path.join(_REPO, "docs", "vectors", "protocol-v1.json")


def build(previous: dict | None = None) -> dict:
    """The vectors (a JSON-ready dict).  ``previous``: the current file, whose
    HPKE uploads are kept when they still open (see the module docstring)."""
    fleet_id = fixed("fleet id", 8).hex()
    context = opaque_context(fleet_id)
    ksf = DEFAULT_KSF
    ksf_pairs = sorted(ksf.to_dict().items())

    # ---- the fleet's keys (the nodes' secrets are here so the vectors can be
    # checked from both sides; a client only ever sees the public halves)
    oprf_seed = fixed("oprf seed", core.Nh)
    server_sk, server_pk = core.derive_dh_key_pair(fixed("server key seed", core.Nseed))
    enroll_sk_obj = X25519PrivateKey.from_private_bytes(fixed("enroll key", 32))
    enroll_sk = enroll_sk_obj.private_bytes_raw()
    enroll_pk = enroll_sk_obj.public_key().public_bytes_raw()
    seal_key, token_key = fixed("seal key", 32), fixed("token key", 32)
    cluster_secret = fixed("cluster secret", 32).hex()
    ca_sk = ed25519_key("fleet CA key")
    channel_ca = channel_ca_der(fleet_id, ca_sk)
    endpoints = [f"https://n{i}.vault.example:7201" for i in (1, 2, 3)]
    max_attempts_default = 10

    def ticket_seal(payload: bytes, label: str) -> bytes:  # keystore.seal_ticket, fixed nonce
        return S.seal_with_nonce(token_key, payload, b"vault-raft ticket v1 " + fleet_id.encode(),
                                 fixed(label, 12))

    def token_seal(payload: bytes, label: str) -> bytes:  # keystore.seal_token, fixed nonce
        return S.seal_with_nonce(token_key, payload, b"vault-raft token v1 " + fleet_id.encode(),
                                 fixed(label, 12))

    # ---- lp
    lp_cases = [[], [b""], [b"a"], [b"vault-raft", b"", b"\x00\x01"], [bytes(300)]]
    lp = [{"parts": hexed(parts), "output": S.length_prefixed(*parts).hex()} for parts in lp_cases]

    # ---- the tenant token the requests below carry
    tenant_id, user_text = "app", "alice"
    user = user_text.encode()
    record_key = tenant_id.encode() + b"\0" + user  # where the node keeps alice's record
    tenant_sk = ed25519_key("tenant key")
    jti = "dmVjdG9yLWp0aS0x"
    token = T.mint(tenant_id, tenant_sk, user, fleet_id, lifetime=300, now=T0, jti=jti)
    tenant_token = {
        "tenant": tenant_id, "private_key": ed_priv(tenant_sk).hex(),
        "public_key": ed_pub(tenant_sk).hex(), "user": user_text,
        "claims": {"iss": tenant_id, "sub": user_text, "aud": fleet_id, "iat": T0,
                   "exp": T0 + 300, "jti": jti},
        "jwt": token, "valid_at": T0 + 10,
    }

    # ---- enroll
    password = b"correct horse battery staple"
    secret = fixed("the secret", 32)
    max_attempts = 5
    blind_reg = fixed_scalar("blind registration")
    cred_id = fixed("credential identifier", core.Nseed)
    envelope_nonce = fixed("envelope nonce", core.Nn)
    reg_request = core.registration_request(password, blind_reg)
    reg_response = core.registration_response(oprf_seed, server_pk, reg_request, cred_id)
    evaluated = reg_response[:core.Noe]
    rwd = core._randomized_password(password, blind_reg, evaluated, ksf)
    record, export_key = core.registration_finalize(password, blind_reg, reg_response, ksf,
                                                    envelope_nonce)
    ticket_nonce = fixed("ticket nonce", 16)
    ticket_expires = T0_MS + 300_000
    ticket_seq = 41
    ticket = ticket_seal(P.pack(["enroll", record_key, ticket_nonce, cred_id, ticket_seq,
                                 ticket_expires]), "ticket seal nonce")
    enroll_info = P.upload_info(fleet_id, user, b"enroll", ticket_nonce)
    enroll_upload = kept_upload(previous, ("enroll", "upload"), enroll_sk, enroll_pk, enroll_info,
                            secret)

    # ---- recover with a wrong code (attempt 1 of 5), then the right one (attempt 2)
    def login(label: str, pw: bytes):
        inputs = {"blind_login": fixed_scalar(f"{label} blind login"),
                  "client_nonce": fixed(f"{label} client nonce", core.Nn),
                  "client_keyshare_seed": fixed(f"{label} client keyshare seed", core.Nseed),
                  "masking_nonce": fixed(f"{label} masking nonce", core.Nn),
                  "server_nonce": fixed(f"{label} server nonce", core.Nn),
                  "server_keyshare_seed": fixed(f"{label} server keyshare seed", core.Nseed)}
        st = core.client_start(pw, inputs["blind_login"], inputs["client_nonce"],
                               inputs["client_keyshare_seed"])
        server_state, ke2 = core.server_respond(
            oprf_seed=oprf_seed, server_sk=server_sk, server_pk=server_pk, record=record,
            credential_identifier=cred_id, ke1=st.ke1, context=context, server_identity=None,
            client_identity=None, masking_nonce=inputs["masking_nonce"],
            server_nonce=inputs["server_nonce"],
            server_keyshare_seed=inputs["server_keyshare_seed"])
        return inputs, st, server_state, ke2

    wrong_password = b"correct horse battery stable"
    w_inputs, w_state, _, w_ke2 = login("wrong", wrong_password)
    try:
        core.client_finish(w_state, w_ke2, ksf, context, None, None)
        raise AssertionError("the wrong code must not log in")
    except OpaqueError as exc:
        wrong_error = str(exc)

    r_inputs, r_state, r_server, r_ke2 = login("right", password)
    ke3, session_key, login_export, recovered_server_pk = core.client_finish(
        r_state, r_ke2, ksf, context, None, None)
    assert core.server_finish(r_server, ke3) == session_key == r_server.session_key
    assert login_export == export_key and recovered_server_pk == server_pk
    attempt_id, version = fixed("attempt id", 16), fixed("record version", 16)
    recovery_token = token_seal(P.pack([record_key, attempt_id, version, T0_MS + 300_000,
                                        r_server.expected_client_mac + r_server.session_key]),
                                "token seal nonce")
    wrong_token = token_seal(P.pack([record_key, fixed("wrong attempt id", 16), version,
                                     T0_MS + 300_000, bytes(128)]), "wrong token seal nonce")

    # ---- the released secret
    release_key = S.session_subkey(session_key, P.RELEASE_KEY)
    box_nonce = fixed("secret box nonce", 12)
    release_ad = P.release_ad(user, recovery_token)
    secret_box = S.seal_with_nonce(release_key, secret, release_ad, box_nonce)
    assert P.open_release(session_key, user, recovery_token, secret_box) == secret

    # ---- manage: the three operations, each proved with the recovery above
    manage_key = S.session_subkey(session_key, P.MANAGE_KEY)
    new_secret = fixed("the new secret", 48)
    cs_info = P.upload_info(fleet_id, user, b"change_secret", recovery_token)
    cs_upload = kept_upload(previous, ("manage", "change_secret_upload"), enroll_sk, enroll_pk,
                        cs_info, new_secret)
    new_password = b"new recovery code 4711"
    cc = {"password": new_password, "blind_registration": fixed_scalar("new blind registration"),
          "credential_identifier": fixed("new credential identifier", core.Nseed),
          "envelope_nonce": fixed("new envelope nonce", core.Nn)}
    cc_request = core.registration_request(new_password, cc["blind_registration"])
    cc_response = core.registration_response(oprf_seed, server_pk, cc_request,
                                             cc["credential_identifier"])
    cc_record, cc_export = core.registration_finalize(new_password, cc["blind_registration"],
                                                      cc_response, ksf, cc["envelope_nonce"])
    cc_nonce = fixed("change_code ticket nonce", 16)
    cc_ticket = ticket_seal(P.pack(["change_code", record_key, cc_nonce,
                                    cc["credential_identifier"], ticket_seq + 3,
                                    T0_MS + 300_000]), "change_code ticket seal nonce")
    proofs = []
    for op, payload, tkt in (("change_secret", cs_upload, b""),
                             ("change_code", cc_record, cc_ticket),
                             ("delete", b"", b"")):
        msg = P.manage_message(op, user, recovery_token, payload, tkt)
        proof = P.manage_proof(session_key, op, user, recovery_token, payload, tkt)
        assert proof == S.mac(manage_key, msg)
        proofs.append({"op": op, "payload": payload.hex(), "ticket": tkt.hex(),
                       "message": msg.hex(), "proof": proof.hex()})

    # ---- trust: deployment record, bundles of epochs 1 and 2, the witness's log
    trust = trust_vectors(fleet_id=fleet_id, oprf_seed=oprf_seed, server_sk=server_sk,
                          server_pk=server_pk, seal_key=seal_key, token_key=token_key,
                          enroll_sk=enroll_sk, enroll_pk=enroll_pk,
                          cluster_secret=cluster_secret, channel_ca=channel_ca,
                          endpoints=endpoints, ksf_pairs=ksf_pairs,
                          max_attempts_default=max_attempts_default)

    # ---- the messages as they travel (msgpack bodies; auth and deadline_ms included)
    deadline = T0_MS + 10_000

    def req(body: dict) -> dict:
        return dict(body, auth=token, deadline_ms=deadline)

    wire = [
        ("POST /v1/enroll/start", req({"user": user_text, "request": reg_request,
                                       "purpose": "enroll"}),
         200, {"response": reg_response, "ticket": ticket, "nonce": ticket_nonce,
               "expires_ms": ticket_expires}),
        ("POST /v1/enroll/finish", req({"user": user_text, "record": record, "ticket": ticket,
                                        "upload": enroll_upload, "max_attempts": max_attempts}),
         201, {"enrolled": True, "max_attempts": max_attempts}),
        ("POST /v1/recover/start", req({"user": user_text, "ke1": w_state.ke1}),
         200, {"ke2": w_ke2, "token": wrong_token, "attempts_left": max_attempts - 1}),
        ("POST /v1/recover/start", req({"user": user_text, "ke1": r_state.ke1}),
         200, {"ke2": r_ke2, "token": recovery_token, "attempts_left": max_attempts - 2}),
        ("POST /v1/recover/finish", req({"user": user_text, "token": recovery_token,
                                         "ke3": ke3}),
         200, {"secret_box": secret_box, "failed_attempts": 1, "max_attempts": max_attempts}),
        ("POST /v1/manage", req({"user": user_text, "op": "delete", "token": recovery_token,
                                 "payload": b"", "proof": bytes.fromhex(proofs[2]["proof"])}),
         200, {"done": "deleted"}),
        ("POST /v1/recover/start", {"user": user_text, "ke1": r_state.ke1,
                                    "deadline_ms": deadline},
         401, {"error": "auth_failed", "message": "not authorized: a tenant token (auth) is "
                                                  "required", "reason": "token"}),
        ("POST /v1/enroll/finish", req({"user": user_text, "record": record, "ticket": ticket,
                                        "upload": enroll_upload, "max_attempts": max_attempts}),
         409, {"error": "exists", "message": "this enrollment ticket was already used",
               "reason": "replayed"}),
    ]
    wire_out = [{"endpoint": ep, "request": P.pack(body).hex(), "status": status,
                 "reply": P.pack(reply).hex()} for ep, body, status, reply in wire]

    return {
        "protocol": PROTOCOL,
        "format": FORMAT,
        "about": "Conformance vectors for docs/protocol.md. Byte strings are lowercase hex; "
                 "msgpack bodies are the hex of their exact bytes. The nodes' secret keys are "
                 "included so that both sides can be checked; clients never see them. "
                 "Regenerate with: python -m vault_raft.ops.protocol_vectors --out "
                 "docs/vectors/protocol-v1.json",
        "lp": lp,
        "fleet": {
            "fleet_id": fleet_id, "context": context.hex(),
            "ksf": [[k, v] for k, v in ksf_pairs],
            "opaque": {"oprf_seed": oprf_seed.hex(), "server_private_key": server_sk.hex(),
                       "server_public_key": server_pk.hex()},
            "enroll_key": {"private_key": enroll_sk.hex(), "public_key": enroll_pk.hex()},
            "token_key": token_key.hex(),
        },
        "tenant_token": tenant_token,
        "enroll": {
            "user": user_text, "password": password.hex(), "secret": secret.hex(),
            "max_attempts": max_attempts,
            "inputs": {"blind_registration": blind_reg.hex(),
                       "credential_identifier": cred_id.hex(),
                       "envelope_nonce": envelope_nonce.hex()},
            "registration_request": reg_request.hex(),
            "registration_response": reg_response.hex(),
            "randomized_password": rwd.hex(),
            "registration_record": record.hex(), "export_key": export_key.hex(),
            "ticket": {"purpose": "enroll", "nonce": ticket_nonce.hex(),
                       "expires_ms": ticket_expires, "ticket": ticket.hex()},
            "upload": {"purpose": "enroll", "binding": ticket_nonce.hex(),
                       "info": enroll_info.hex(), "recipient_public_key": enroll_pk.hex(),
                       "recipient_private_key": enroll_sk.hex(), "plaintext": secret.hex(),
                       "ciphertext": enroll_upload.hex()},
        },
        "recover_wrong": {
            "password": wrong_password.hex(), "inputs": hexed(w_inputs),
            "KE1": w_state.ke1.hex(), "KE2": w_ke2.hex(), "outcome": "wrong_code",
            "client_error": wrong_error, "token": wrong_token.hex(),
            "attempts_left": max_attempts - 1,
        },
        "recover_right": {
            "password": password.hex(), "inputs": hexed(r_inputs),
            "KE1": r_state.ke1.hex(), "KE2": r_ke2.hex(), "KE3": ke3.hex(),
            "session_key": session_key.hex(), "export_key": login_export.hex(),
            "token": recovery_token.hex(), "attempts_left": max_attempts - 2,
            "failed_attempts": 1, "max_attempts": max_attempts,
        },
        "secret_box": {
            "session_key": session_key.hex(), "label": b"vault-raft session v1 release".hex(),
            "release_key": release_key.hex(), "user": user.hex(), "token": recovery_token.hex(),
            "ad": release_ad.hex(), "nonce": box_nonce.hex(), "plaintext": secret.hex(),
            "secret_box": secret_box.hex(),
        },
        "manage": {
            "session_key": session_key.hex(), "label": b"vault-raft session v1 manage".hex(),
            "manage_key": manage_key.hex(), "user": user.hex(), "token": recovery_token.hex(),
            "proofs": proofs,
            "change_secret_upload": {"purpose": "change_secret",
                                     "binding": recovery_token.hex(), "info": cs_info.hex(),
                                     "recipient_public_key": enroll_pk.hex(),
                                     "recipient_private_key": enroll_sk.hex(),
                                     "plaintext": new_secret.hex(),
                                     "ciphertext": cs_upload.hex()},
            "change_code": {"password": new_password.hex(),
                            "inputs": {"blind_registration": cc["blind_registration"].hex(),
                                       "credential_identifier":
                                           cc["credential_identifier"].hex(),
                                       "envelope_nonce": cc["envelope_nonce"].hex()},
                            "registration_request": cc_request.hex(),
                            "registration_response": cc_response.hex(),
                            "registration_record": cc_record.hex(),
                            "export_key": cc_export.hex(), "ticket": cc_ticket.hex()},
        },
        "trust": trust,
        "wire": wire_out,
    }


def render(vectors: dict) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def _load(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vault_raft.ops.protocol_vectors",
                                 description="Write (or --check) the protocol's conformance "
                                             "vectors.")
    ap.add_argument("--out", default=DEFAULT_PATH, help=f"the file (default {DEFAULT_PATH})")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if the file differs from what this makes")
    args = ap.parse_args(argv)
    previous = _load(args.out)
    text = render(build(previous))
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                same = f.read() == text
        except OSError:
            same = False
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from the generator'}")
        return 0 if same else 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write(args.out, text.encode("utf-8"), mode=0o666)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
