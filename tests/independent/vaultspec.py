"""A minimal, independent implementation of vault-raft protocol v1, written from
docs/protocol.md and the RFCs it cites, for checking the conformance vectors.

It imports nothing from this repository: only the standard library,
``cryptography`` (AES-GCM, HPKE, Argon2id, Ed25519, X.509), ``rbcl``
(libsodium's ristretto255) and ``msgpack``.  Section numbers in comments are
docs/protocol.md's unless an RFC is named.

``spec_checks.py`` beside it checks every vector with it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json

import msgpack
import rbcl
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.x509.oid import NameOID


class Refused(Exception):
    """A check of the specification failed (the message says which)."""


# ----------------------------------------------------------------- section 1

def i2osp(n: int, k: int) -> bytes:
    return n.to_bytes(k, "big")


def lp(*parts: bytes) -> bytes:
    """Each part preceded by its length as a 4-byte big-endian integer."""
    return b"".join(i2osp(len(p), 4) + p for p in parts)


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    if not salt:  # RFC 5869: no salt is HashLen zero bytes
        salt = bytes(hashlib.new(hash_name).digest_size)
    return hmac.new(salt, ikm, hash_name).digest()


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hash_name).digest()
        out += block
        i += 1
    return out[:length]


def hkdf(hash_name: str, salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(hash_name, hkdf_extract(hash_name, salt, ikm), info, length)


# --------------------------------------------------- ristretto255 (RFC 9496)

IDENTITY = bytes(32)


def element(b: bytes) -> bytes:
    """Deserialize: 32 bytes, canonical, not the identity."""
    if len(b) != 32 or b == IDENTITY or not rbcl.crypto_core_ristretto255_is_valid_point(b):
        raise Refused("not a valid ristretto255 element")
    return b


def smult(scalar: bytes, point: bytes) -> bytes:
    return rbcl.crypto_scalarmult_ristretto255(scalar, point)


def smult_base(scalar: bytes) -> bytes:
    return rbcl.crypto_scalarmult_ristretto255_base(scalar)


def expand_message_xmd(msg: bytes, dst: bytes, n: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512 (b_in_bytes 64, s_in_bytes 128)."""
    ell = (n + 63) // 64
    dst_prime = dst + i2osp(len(dst), 1)
    b0 = hashlib.sha512(bytes(128) + msg + i2osp(n, 2) + i2osp(0, 1) + dst_prime).digest()
    blocks = [hashlib.sha512(b0 + i2osp(1, 1) + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(a ^ b for a, b in zip(b0, blocks[-1], strict=True))
        blocks.append(hashlib.sha512(mixed + i2osp(i, 1) + dst_prime).digest())
    return b"".join(blocks)[:n]


# ----------------------------------------------------- the OPRF (RFC 9497)

CONTEXT_STRING = b"OPRFV1-" + i2osp(0, 1) + b"-ristretto255-SHA512"


def hash_to_group(msg: bytes) -> bytes:
    return rbcl.crypto_core_ristretto255_from_hash(
        expand_message_xmd(msg, b"HashToGroup-" + CONTEXT_STRING, 64))


def hash_to_scalar(msg: bytes, dst: bytes) -> bytes:
    return rbcl.crypto_core_ristretto255_scalar_reduce(expand_message_xmd(msg, dst, 64))


def derive_key_pair(seed: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9497 section 3.2.1."""
    derive_input = seed + i2osp(len(info), 2) + info
    for counter in range(256):
        sk = hash_to_scalar(derive_input + i2osp(counter, 1), b"DeriveKeyPair" + CONTEXT_STRING)
        if sk != bytes(32):
            return sk, smult_base(sk)
    raise Refused("DeriveKeyPairError")


def oprf_blind(password: bytes, blind: bytes) -> bytes:
    return smult(blind, hash_to_group(password))


def oprf_finalize(password: bytes, blind: bytes, evaluated: bytes) -> bytes:
    n = smult(rbcl.crypto_core_ristretto255_scalar_invert(blind), evaluated)
    return hashlib.sha512(i2osp(len(password), 2) + password + i2osp(len(n), 2) + n
                          + b"Finalize").digest()


# ------------------------------------------------------- OPAQUE (RFC 9807)

NN = NSEED = NPK = NOK = 32
NH = NM = NX = 64


def expand(prk: bytes, info: bytes, n: int) -> bytes:
    return hkdf_expand("sha512", prk, info, n)


def extract(salt: bytes, ikm: bytes) -> bytes:
    return hkdf_extract("sha512", salt, ikm)


def mac512(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, "sha512").digest()


def derive_dh_key_pair(seed: bytes) -> tuple[bytes, bytes]:
    return derive_key_pair(seed, b"OPAQUE-DeriveDiffieHellmanKeyPair")


def check_ksf(ksf: dict) -> None:
    """Section 8.2.3: a kind this client knows, parameters in range."""
    if ksf["kind"] == "identity":
        return
    if ksf["kind"] != "argon2id":
        raise Refused(f"unknown KSF {ksf['kind']!r}")
    salt = bytes.fromhex(ksf["salt"])
    m, t, p, n = ksf["memory_kib"], ksf["iterations"], ksf["lanes"], ksf["length"]
    if not (8 * p <= m <= 4194304 and 1 <= t <= 64 and 1 <= p <= 16 and len(salt) >= 8
            and 32 <= n <= 128):
        raise Refused("KSF parameters out of range")


def stretch(ksf: dict, msg: bytes) -> bytes:
    """Section 8.2.3: the fleet's KSF from its sorted [name, value] pairs."""
    check_ksf(ksf)
    if ksf["kind"] == "identity":
        return msg
    return Argon2id(salt=bytes.fromhex(ksf["salt"]), length=ksf["length"],
                    iterations=ksf["iterations"], lanes=ksf["lanes"],
                    memory_cost=ksf["memory_kib"]).derive(msg)


def randomized_password(password: bytes, blind: bytes, evaluated: bytes, ksf: dict) -> bytes:
    y = oprf_finalize(password, blind, evaluated)
    return extract(b"", y + stretch(ksf, y))


def _envelope_keys(rwd: bytes, nonce: bytes, server_pk: bytes, sid=None, cid=None):
    auth_key = expand(rwd, nonce + b"AuthKey", NH)
    export_key = expand(rwd, nonce + b"ExportKey", NH)
    client_sk, client_pk = derive_dh_key_pair(expand(rwd, nonce + b"PrivateKey", NSEED))
    # The protocol sets no identities: the RFC defaults, the public keys (section
    # 8.2.1).  (sid and cid exist for the RFC 9807 vectors that set some.)
    sid, cid = sid or server_pk, cid or client_pk
    cleartext = server_pk + i2osp(len(sid), 2) + sid + i2osp(len(cid), 2) + cid
    return mac512(auth_key, nonce + cleartext), export_key, client_sk, client_pk


def registration_request(password: bytes, blind: bytes) -> bytes:
    return oprf_blind(password, blind)


def oprf_key(oprf_seed: bytes, credential_identifier: bytes) -> bytes:
    seed = expand(oprf_seed, credential_identifier + b"OprfKey", NOK)
    return derive_key_pair(seed, b"OPAQUE-DeriveKeyPair")[0]


def registration_response(oprf_seed: bytes, server_pk: bytes, request: bytes,
                          credential_identifier: bytes) -> bytes:
    return smult(oprf_key(oprf_seed, credential_identifier), element(request)) + server_pk


def finalize_registration(password: bytes, blind: bytes, response: bytes, ksf: dict,
                          envelope_nonce: bytes, expected_server_pk: bytes, sid=None, cid=None):
    """Returns (record, export_key, randomized_password); checks the server key
    against the bundle's first (section 8.2.5)."""
    if len(response) != 64:
        raise Refused("registration response: 64 bytes")
    evaluated, server_pk = element(response[:32]), element(response[32:])
    if server_pk != expected_server_pk:
        raise Refused("registration response names another server key than the bundle")
    rwd = randomized_password(password, blind, evaluated, ksf)
    masking_key = expand(rwd, b"MaskingKey", NH)
    auth_tag, export_key, _, client_pk = _envelope_keys(rwd, envelope_nonce, server_pk, sid, cid)
    return client_pk + masking_key + envelope_nonce + auth_tag, export_key, rwd


def _expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"OPAQUE-" + label
    return expand(secret, i2osp(length, 2) + i2osp(len(full), 1) + full
                  + i2osp(len(context), 1) + context, length)


def _keys(ikm: bytes, preamble: bytes):
    prk = extract(b"", ikm)
    th = hashlib.sha512(preamble).digest()
    handshake = _expand_label(prk, b"HandshakeSecret", th, NX)
    session = _expand_label(prk, b"SessionKey", th, NX)
    return (_expand_label(handshake, b"ServerMAC", b"", NX),
            _expand_label(handshake, b"ClientMAC", b"", NX), session)


def _preamble(context: bytes, cid: bytes, ke1: bytes, sid: bytes, credential_response: bytes,
              server_nonce: bytes, server_keyshare: bytes) -> bytes:
    return (b"OPAQUEv1-" + i2osp(len(context), 2) + context + i2osp(len(cid), 2) + cid + ke1
            + i2osp(len(sid), 2) + sid + credential_response + server_nonce + server_keyshare)


def ke1(password: bytes, blind: bytes, client_nonce: bytes, keyshare_seed: bytes):
    """(KE1, client state)."""
    eph_sk, eph_pk = derive_dh_key_pair(keyshare_seed)
    msg = oprf_blind(password, blind) + client_nonce + eph_pk
    return msg, {"password": password, "blind": blind, "eph_sk": eph_sk, "ke1": msg}


def server_ke2(oprf_seed: bytes, server_sk: bytes, server_pk: bytes, record: bytes,
               credential_identifier: bytes, ke1_msg: bytes, context: bytes,
               masking_nonce: bytes, server_nonce: bytes, keyshare_seed: bytes,
               sid=None, cid=None):
    """(KE2, expected KE3, session key)."""
    blinded, client_keyshare = element(ke1_msg[:32]), element(ke1_msg[64:96])
    client_pk, masking_key, envelope = record[:32], record[32:96], record[96:]
    evaluated = smult(oprf_key(oprf_seed, credential_identifier), blinded)
    pad = expand(masking_key, masking_nonce + b"CredentialResponsePad", NPK + NN + NM)
    masked = bytes(a ^ b for a, b in zip(pad, server_pk + envelope, strict=True))
    credential_response = evaluated + masking_nonce + masked
    eph_sk, eph_pk = derive_dh_key_pair(keyshare_seed)
    pre = _preamble(context, cid or client_pk, ke1_msg, sid or server_pk, credential_response,
                    server_nonce, eph_pk)
    ikm = (smult(eph_sk, client_keyshare) + smult(server_sk, client_keyshare)
           + smult(eph_sk, element(client_pk)))
    km2, km3, session = _keys(ikm, pre)
    server_mac = mac512(km2, hashlib.sha512(pre).digest())
    expected_ke3 = mac512(km3, hashlib.sha512(pre + server_mac).digest())
    return credential_response + server_nonce + eph_pk + server_mac, expected_ke3, session


def client_ke3(state: dict, ke2: bytes, ksf: dict, context: bytes, expected_server_pk: bytes,
               sid=None, cid=None):
    """(KE3, session key, export key); Refused on a wrong code or an altered KE2."""
    if len(ke2) != 320:
        raise Refused("KE2: 320 bytes")
    evaluated, masking_nonce, masked = element(ke2[:32]), ke2[32:64], ke2[64:192]
    server_nonce, server_keyshare, server_mac = ke2[192:224], element(ke2[224:256]), ke2[256:]
    rwd = randomized_password(state["password"], state["blind"], evaluated, ksf)
    pad = expand(expand(rwd, b"MaskingKey", NH), masking_nonce + b"CredentialResponsePad",
                 NPK + NN + NM)
    plain = bytes(a ^ b for a, b in zip(pad, masked, strict=True))
    server_pk, env_nonce, auth_tag = plain[:32], plain[32:64], plain[64:]
    tag, export_key, client_sk, client_pk = _envelope_keys(rwd, env_nonce, server_pk, sid, cid)
    if not hmac.compare_digest(tag, auth_tag):
        raise Refused("envelope does not open: wrong code (or an altered KE2)")
    if server_pk != expected_server_pk:
        raise Refused("KE2 names another server key than the bundle")
    pre = _preamble(context, cid or client_pk, state["ke1"], sid or server_pk, ke2[:192],
                    server_nonce, server_keyshare)
    ikm = (smult(state["eph_sk"], server_keyshare) + smult(state["eph_sk"], element(server_pk))
           + smult(client_sk, server_keyshare))
    km2, km3, session = _keys(ikm, pre)
    if not hmac.compare_digest(mac512(km2, hashlib.sha512(pre).digest()), server_mac):
        raise Refused("server MAC does not verify")
    return mac512(km3, hashlib.sha512(pre + server_mac).digest()), session, export_key


def opaque_context(fleet_id: str) -> bytes:
    return b"vault-raft OPAQUE v1 " + fleet_id.encode()


# ------------------------------------------------- sections 8.3 to 8.6

HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def upload_info(fleet_id: str, user: bytes, purpose: bytes, binding: bytes) -> bytes:
    return lp(b"vault-raft upload v2", fleet_id.encode(), user, purpose, binding)


def open_upload(private_key: bytes, upload: bytes, info: bytes) -> bytes:
    return HPKE.decrypt(upload, X25519PrivateKey.from_private_bytes(private_key), info)


def seal_upload(public_key_of: X25519PrivateKey, secret: bytes, info: bytes) -> bytes:
    return HPKE.encrypt(secret, public_key_of.public_key(), info)


def session_subkey(session_key: bytes, label: bytes) -> bytes:
    return hkdf("sha512", b"", session_key, b"vault-raft session v1 " + label, 32)


def release_ad(user: bytes, token: bytes) -> bytes:
    return lp(b"vault-raft release v1", user, token)


def open_box(session_key: bytes, user: bytes, token: bytes, box: bytes) -> bytes:
    if len(box) < 29 or box[0] != 0x01:
        raise Refused("secret box malformed")
    try:
        return AESGCM(session_subkey(session_key, b"release")).decrypt(
            box[1:13], box[13:], release_ad(user, token))
    except InvalidTag:
        raise Refused("secret box does not open") from None


def seal_box(session_key: bytes, user: bytes, token: bytes, secret: bytes, nonce: bytes) -> bytes:
    return b"\x01" + nonce + AESGCM(session_subkey(session_key, b"release")).encrypt(
        nonce, secret, release_ad(user, token))


def manage_message(op: str, user: bytes, token: bytes, payload: bytes, ticket: bytes) -> bytes:
    return lp(b"vault-raft manage v2", op.encode(), user, token, payload, ticket)


def manage_proof(session_key: bytes, op: str, user: bytes, token: bytes, payload: bytes,
                 ticket: bytes = b"") -> bytes:
    return hmac.new(session_subkey(session_key, b"manage"),
                    manage_message(op, user, token, payload, ticket), "sha256").digest()


# ------------------------------------------------------------ section 7

def _b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _no_dupes(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise Refused(f"claim {k} twice")
        d[k] = v
    return d


def check_tenant_token(token: str, tenant_keys: list[bytes], tenant_id: str, user: bytes,
                       audiences: set[str], now: int) -> dict:
    if not isinstance(token, str) or len(token) > 2048 or token.count(".") != 2:
        raise Refused("not a compact JWS of at most 2048 bytes")
    h64, p64, s64 = token.split(".")
    header = json.loads(_b64url(h64), object_pairs_hook=_no_dupes)
    if header.get("alg") != "EdDSA":
        raise Refused("alg must be EdDSA")
    for pk in tenant_keys:
        try:
            Ed25519PublicKey.from_public_bytes(pk).verify(_b64url(s64), f"{h64}.{p64}".encode())
            break
        except InvalidSignature:
            continue
    else:
        raise Refused("signature is not the tenant's")
    c = json.loads(_b64url(p64), object_pairs_hook=_no_dupes)
    types = {"iss": str, "sub": str, "aud": str, "iat": int, "exp": int, "jti": str}
    for name, t in types.items():
        if type(c.get(name)) is not t:
            raise Refused(f"claim {name} missing or not {t.__name__}")
    if c["iss"] != tenant_id or c["sub"].encode() != user or b"\0" in user:
        raise Refused("issuer or subject")
    if c["aud"] not in audiences:
        raise Refused("audience")
    if not (c["exp"] > now and c["iat"] <= now + 60 and 0 < c["exp"] - c["iat"] <= 900):
        raise Refused("times")
    return c


# ------------------------------------------------------------ section 6

def canonical(value) -> bytes:
    """Shortest-form msgpack (section 6.2): msgpack's packer with bin for bytes."""
    return msgpack.packb(value, use_bin_type=True)


def decode_canonical(data: bytes):
    value = msgpack.unpackb(data, raw=False)
    if canonical(value) != data:
        raise Refused("not the canonical encoding")
    return value


def ed25519_ok(pk: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(h: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, h
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       path: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2 (for 0 < first < second)."""
    if not path or not 0 < first < second:
        return False
    if first & (first - 1) == 0:
        path = [first_root] + list(path)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_root and sr == second_root and sn == 0


def parse_bundle(data: bytes) -> dict:
    """Section 6.3 (v2 only: a v1 bundle names no channel CA, 4.2)."""
    b = decode_canonical(data)
    if not (isinstance(b, list) and len(b) == 7 and b[0] == "vault-raft bundle v2"):
        raise Refused("not a v2 bundle")
    _, ns, epoch, fleets, nb, na, prev = b
    if not (isinstance(ns, str) and 0 < len(ns.encode()) <= 128 and type(epoch) is int
            and epoch >= 1 and isinstance(prev, bytes) and len(prev) == 32):
        raise Refused("bundle fields")
    entries = []
    for f in fleets:
        if len(f) != 9:
            raise Refused("a v2 fleet entry has 9 fields")
        fid, role, osk, ek, ksf, m, eps, dep, ca = f
        if role not in ("current", "retiring") or not eps or any(
                not isinstance(k, bytes) or len(k) != 32 for k in (osk, ek, dep)) \
                or not isinstance(ca, bytes) or not 0 < len(ca) <= 4096:
            raise Refused("fleet entry")
        names = [k for k, _ in ksf]
        if names != sorted(names):
            raise Refused("KSF pairs not sorted")
        entries.append({"fleet_id": fid, "role": role, "opaque_server_key": osk,
                        "enroll_key": ek, "ksf": dict(ksf), "max_attempts": m,
                        "endpoints": eps, "deployment": dep, "channel_ca": ca})
    if sum(e["role"] == "current" for e in entries) != 1 \
            or len({e["fleet_id"] for e in entries}) != len(entries):
        raise Refused("exactly one current fleet, ids unique")
    return {"namespace": ns, "epoch": epoch, "fleets": entries, "not_before": nb,
            "not_after": na, "prev_hash": prev, "digest": hashlib.sha256(data).digest()}


def parse_tree_head(sth: bytes) -> dict:
    x = decode_canonical(sth)
    if not (isinstance(x, list) and len(x) == 7 and x[0] == "vault-raft tree head v2"):
        raise Refused("not a v2 tree head")
    _, size, root, ts, ns, epoch, digest = x
    if (epoch == 0) != (digest == bytes(32)) or len(root) != 32 or len(digest) != 32:
        raise Refused("tree head fields")
    return {"size": size, "root": root, "timestamp": ts, "namespace": ns, "epoch": epoch,
            "digest": digest}


def check_channel_ca(der: bytes, fleet_id: str) -> None:
    cert = x509.load_der_x509_certificate(der)
    if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
        raise Refused("channel CA is not a CA")
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if orgs != [fleet_id]:
        raise Refused("channel CA names another fleet")


def verify_trust(reply: dict, config: dict, state: dict, now: int) -> tuple[dict, dict]:
    """Section 6.8, steps 1 to 10, in order; returns (bundle, new state).
    ``state``: tree_size, tree_root, epochs {namespace: [epoch, digest hex]}."""
    types = {"bundle": bytes, "operator_sig": bytes, "statement": bytes, "witness_sig": bytes,
             "leaf_index": int, "inclusion": list, "sth": bytes, "sth_sig": bytes,
             "consistency": list}
    for k, t in types.items():
        if not isinstance(reply.get(k), t):
            raise Refused(f"1: {k}")
    for k in ("inclusion", "consistency"):
        if len(reply[k]) > 64 or any(not isinstance(x, bytes) or len(x) != 32 for x in reply[k]):
            raise Refused(f"1: {k}")
    bundle = parse_bundle(reply["bundle"])                                         # 1
    if not ed25519_ok(config["operator_key"], reply["operator_sig"], reply["bundle"]):
        raise Refused("2: operator signature")
    if not ed25519_ok(config["witness_key"], reply["witness_sig"], reply["statement"]):
        raise Refused("3: witness signature")
    v, ns, _ts, epoch, digest = msgpack.unpackb(reply["statement"], raw=False)
    if (v, ns, epoch, digest) != (1, bundle["namespace"], bundle["epoch"], bundle["digest"]):
        raise Refused("3: the statement is about another bundle")
    if not bundle["not_before"] <= now <= bundle["not_after"]:                     # 4
        raise Refused("4: expired")
    if not ed25519_ok(config["witness_key"], reply["sth_sig"], reply["sth"]):      # 5
        raise Refused("5: tree head signature")
    head = parse_tree_head(reply["sth"])
    size, root, old_size, old_root = head["size"], head["root"], state["tree_size"], \
        state["tree_root"]
    if old_size and size == old_size and root != old_root:
        raise Refused("5: fork")
    if old_size and size > old_size and not verify_consistency(
            old_size, size, old_root, root, reply["consistency"]):
        raise Refused("5: not consistent")
    if old_size and size < old_size and not verify_consistency(
            size, old_size, root, old_root, reply["consistency"]):
        raise Refused("5: lagging")
    if not verify_inclusion(leaf_hash(reply["statement"]), reply["leaf_index"], size,   # 6
                            reply["inclusion"], root):
        raise Refused("6: not in the log")
    seen = state["epochs"].get(bundle["namespace"])                                # 7
    if seen and (bundle["epoch"] < seen[0]
                 or (bundle["epoch"] == seen[0] and bundle["digest"].hex() != seen[1])):
        raise Refused("7: replayed or forked")
    if head["namespace"] != bundle["namespace"] or head["epoch"] != bundle["epoch"] \
            or head["digest"] != bundle["digest"]:                                  # 8
        raise Refused("8: the head does not name this bundle as the newest")
    if now - head["timestamp"] > config["max_head_age"]:
        raise Refused("8: head too old")
    if bundle["namespace"] != config["namespace"]:                                 # 9
        raise Refused("9: namespace")
    for f in bundle["fleets"]:                                                     # 10
        check_channel_ca(f["channel_ca"], f["fleet_id"])
        check_ksf(f["ksf"])
        if not all(e.startswith("https://") for e in f["endpoints"]):
            raise Refused("10: an endpoint without TLS")
    new = {"tree_size": max(size, old_size), "tree_root": root if size > old_size else old_root,
           "epochs": dict(state["epochs"], **{bundle["namespace"]: [bundle["epoch"],
                                                                    bundle["digest"].hex()]})}
    return bundle, new


def verify_deployment(record: bytes, operator_sig: bytes, operator_key: bytes,
                      entry: dict) -> list[str]:
    """Section 6.9; returns the node ids."""
    if hashlib.sha256(record).digest() != entry["deployment"]:
        raise Refused("record digest")
    if not ed25519_ok(operator_key, operator_sig, record):
        raise Refused("operator signature on the record")
    tag, fid, statements = msgpack.unpackb(record, raw=False)
    if tag != "vault-raft deployment v1" or fid != entry["fleet_id"]:
        raise Refused("record tag or fleet")
    nodes, keysets = [], set()
    for st, sig in statements:
        stag, sfid, node_id, node_pk, keys, _created = msgpack.unpackb(st, raw=False)
        if stag != "vault-raft node keys v1" or sfid != entry["fleet_id"] \
                or not ed25519_ok(node_pk, sig, st):
            raise Refused(f"node statement {node_id}")
        keys = dict(keys)
        if keys["opaque_server"] != entry["opaque_server_key"] \
                or keys["enroll"] != entry["enroll_key"]:
            raise Refused(f"node {node_id} holds other keys")
        keysets.add(tuple(sorted(keys.items())))
        nodes.append(node_id)
    if len(set(nodes)) != len(nodes) or len(keysets) != 1 or len(nodes) != len(entry["endpoints"]):
        raise Refused("nodes")
    return nodes
