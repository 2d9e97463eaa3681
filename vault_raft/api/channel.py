"""The client channel: TLS 1.3 to a node's API, the server pinned to its fleet.

Nodes serve the API over TLS 1.3 with their fleet certificate (the one they
already present to their Raft peers: CN = node id, O = fleet id, signed by
the fleet CA).  A client trusts exactly one certificate authority for a
fleet: the fleet's own CA, whose certificate it learned from ``fleet.json``
(the operator's tools) or from the fleet's verified bundle (end users).  The
system's Web PKI roots are never loaded.

A :class:`Channel` connects, completes the handshake and checks, **before any
request byte is written**, that

1. the server's certificate chains to the pinned CA (OpenSSL, during the
   handshake: a server that cannot prove it holds a key certified by the
   pinned CA gets no further than its Certificate message), and
2. the certificate names the expected fleet (O = fleet id).

On failure it closes the socket and raises :class:`ChannelRefused`; nothing
was sent.  :data:`UNPINNED` is TLS 1.3 without authentication, for the one
fetch whose answer authenticates itself (``GET /v1/trust``: the signed,
witnessed bundle).
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from vault_raft.errors import VaultRaftError

MAX_CA_DER = 4096  # a fleet CA certificate (Ed25519) is about 380 bytes


class ChannelError(VaultRaftError, ConnectionError):
    """The TLS channel could not be set up (handshake failed or timed out):
    nothing was sent, so the request is safe to try elsewhere."""


class ChannelRefused(ChannelError):
    """The server is not the pinned fleet's: nothing was sent."""


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the fleet is named by O = fleet id, checked in Channel.check
    return ctx


def ca_der_from_pem(pem: bytes) -> bytes:
    """The DER bytes of a PEM certificate (e.g. a fleet's ``ca.crt``)."""
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def check_ca(ca_der: bytes, fleet_id: str) -> x509.Certificate:
    """Parse a fleet CA certificate; ValueError unless it is a CA naming ``fleet_id``."""
    if not isinstance(ca_der, bytes) or not 0 < len(ca_der) <= MAX_CA_DER:
        raise ValueError("channel CA must be a DER certificate")
    cert = x509.load_der_x509_certificate(ca_der)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise ValueError("channel CA certificate is not a CA")
    org = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if org != [fleet_id]:
        raise ValueError(f"channel CA names fleet {org}, not {fleet_id!r}")
    return cert


class Channel:
    """How to reach one fleet's API: TLS 1.3, pinned to the fleet CA (or unpinned)."""

    def __init__(self, fleet_id: str | None, ca_der: bytes | None):
        self.fleet_id, self.ca_der = fleet_id, ca_der
        ctx = _base_context()
        if ca_der is None:
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=ca_der)  # the only trust anchor
        self.ctx = ctx

    @property
    def pinned(self) -> bool:
        return self.ca_der is not None

    def check(self, tls: ssl.SSLSocket) -> None:
        """After the handshake, before any request: the peer names our fleet."""
        if not self.pinned:
            return
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise ChannelRefused("the server presented no certificate")
        cert = x509.load_der_x509_certificate(der)
        org = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if org != [self.fleet_id]:
            raise ChannelRefused(f"the server's certificate names fleet {org}, not "
                                 f"{self.fleet_id!r}")

    def wrap(self, sock: socket.socket, host: str) -> ssl.SSLSocket:
        """Handshake on a connected socket and check the peer; closes it on failure."""
        try:
            tls = self.ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise ChannelRefused(f"the server's certificate is not the pinned fleet's "
                                 f"({exc.verify_message})") from None
        except OSError as exc:  # SSLError, timeout, reset: before any request byte
            sock.close()
            raise ChannelError(f"TLS handshake failed: {exc.__class__.__name__}: {exc}") \
                from None
        except BaseException:
            sock.close()
            raise
        try:
            self.check(tls)
        except BaseException:
            tls.close()
            raise
        return tls

    def connection(self, url: str, timeout: float) -> http.client.HTTPConnection:
        """An http.client connection to ``url`` through this channel (https), or a
        plain one for an ``http://`` URL (the fleet's explicit opt-in)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname or not u.port:
            raise ValueError(f"{url}: expected https://host:port")
        if u.scheme == "http":
            return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        return _ChannelHTTPS(u.hostname, u.port, timeout, self)

    def __repr__(self) -> str:
        return f"Channel({self.fleet_id!r}, {'pinned' if self.pinned else 'UNPINNED'})"


class _ChannelHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, timeout: float, channel: Channel):
        super().__init__(host, port, timeout=timeout, context=channel.ctx)
        self._channel = channel

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP (no proxies here)
        self.sock = self._channel.wrap(self.sock, self.host)


UNPINNED = Channel(None, None)


@functools.lru_cache(maxsize=64)
def pinned(fleet_id: str, ca_der: bytes) -> Channel:
    """The (shared) channel pinned to one fleet's CA."""
    return Channel(fleet_id, ca_der)


def for_fleet(fleet) -> Channel | None:
    """The pinned channel of a fleet (anything with ``fleet_id`` and ``channel_ca``),
    or None if it pins none."""
    ca = getattr(fleet, "channel_ca", None)
    return pinned(fleet.fleet_id, ca) if ca else None


def connection(url: str, timeout: float, channel: Channel | None) -> http.client.HTTPConnection:
    """A connection to a node: ``https`` needs a channel, ``http`` is plain."""
    if channel is None and urllib.parse.urlsplit(url).scheme == "https":
        raise ValueError(f"{url}: an https URL needs a channel (the fleet's pinned CA)")
    return (channel or UNPINNED).connection(url, timeout)


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A node's API server context: TLS 1.3 only, the node's fleet certificate,
    no client certificates (clients authenticate with OPAQUE), no session
    tickets (clients do not resume)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_file, key_file)
    ctx.num_tickets = 0
    return ctx
