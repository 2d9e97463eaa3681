"""The fleet PKI: the fleet CA and the node certificates it issues.

``fleet init`` makes a fleet CA (Ed25519, ``cryptography``) and one
certificate per node: CN = node id, O = fleet id, a URI SAN
``vault-raft:raft/<host:port>`` naming the node's Raft address (the identity
:class:`~vault_raft.raft.transport.MtlsTransport` checks), and a DNS or IP
SAN naming the host the node advertises (the host of its Raft and API
addresses), so the certificate binds the node's identity to its own address.
The CA key stays with the operator (``FLEET/ca.key``, 0600); nodes get
``ca.crt``, ``tls.crt`` and ``tls.key``.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

SAN_PREFIX = "vault-raft:raft/"
CERT_DAYS = 5 * 365


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def _pem_key(sk: Ed25519PrivateKey) -> bytes:
    return sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())


def host_san(host: str) -> x509.GeneralName:
    """The SAN entry naming ``host``: an IP address SAN for an IPv4/IPv6
    literal, a DNS name SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def ca_certificate(fleet_id: str, sk: Ed25519PrivateKey, serial: int,
                   not_before: datetime.datetime) -> x509.Certificate:
    """The fleet CA's self-signed certificate (the one profile, used by
    ``make_ca`` and by the conformance vectors with fixed inputs)."""
    name = _name(f"vault-raft fleet CA {fleet_id}", fleet_id)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(sk.public_key()).serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_before + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(sk, None))


def make_ca(fleet_id: str) -> tuple[bytes, bytes]:
    """A fleet CA: (private key PEM, certificate PEM)."""
    sk = Ed25519PrivateKey.generate()
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = ca_certificate(fleet_id, sk, x509.random_serial_number(), start)
    return _pem_key(sk), cert.public_bytes(serialization.Encoding.PEM)


def issue_node_cert(ca_key_pem: bytes, ca_cert_pem: bytes, fleet_id: str, node_id: str,
                    raft_addr: str, host: str | None = None) -> tuple[bytes, bytes]:
    """A node's (private key PEM, certificate PEM), signed by the fleet CA.

    ``host`` is the host the node advertises (default: the host of
    ``raft_addr``); the certificate names it in a DNS or IP SAN."""
    ca_sk = serialization.load_pem_private_key(ca_key_pem, None)
    if not isinstance(ca_sk, Ed25519PrivateKey):
        raise ValueError("the fleet CA key is not an Ed25519 key")
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    sk = Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.UTC)
    advertised = host if host is not None else raft_addr.rsplit(":", 1)[0]
    cert = (x509.CertificateBuilder().subject_name(_name(node_id, fleet_id))
            .issuer_name(ca.subject).public_key(sk.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(SAN_PREFIX + raft_addr),
                 host_san(advertised)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_sk, None))
    return _pem_key(sk), cert.public_bytes(serialization.Encoding.PEM)


def peer_identity(der: bytes) -> tuple[str, str, str]:
    """(fleet id, node id, raft address) named by a (chain-verified) certificate."""
    cert = x509.load_der_x509_certificate(der)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
                if u.startswith(SAN_PREFIX)]
    except x509.ExtensionNotFound:
        uris = []
    if len(cn) != 1 or len(org) != 1 or len(uris) != 1:
        raise ValueError("certificate does not name exactly one fleet node")
    return str(org[0].value), str(cn[0].value), uris[0][len(SAN_PREFIX):]


def cert_hosts(cert_pem: bytes) -> list[str]:
    """The DNS names and IP addresses a certificate's SAN names (as strings)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
            + list(sans.get_values_for_type(x509.DNSName)))
