"""Fleet certificates for in-process replicas: mutual TLS is the only Raft transport."""
from vault_raft.raft.pki import issue_node_cert, make_ca
from vault_raft.raft.transport import TlsConfig

FLEET = "f00dfeed"


def fleet_tls(folder, addrs: list[str], fleet: str = FLEET) -> dict[str, TlsConfig]:
    """A fleet CA and a certificate per Raft address (node ids n1, n2, ...),
    written under ``folder``; returns each address's :class:`TlsConfig`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(fleet)
    (folder / "ca.crt").write_bytes(ca_cert)
    peers = {f"n{i}": a for i, a in enumerate(addrs, 1)}
    out = {}
    for nid, addr in peers.items():
        key, cert = issue_node_cert(ca_key, ca_cert, fleet, nid, addr)
        (folder / f"{nid}.key").write_bytes(key)
        (folder / f"{nid}.crt").write_bytes(cert)
        out[addr] = TlsConfig(fleet, nid, str(folder / "ca.crt"), str(folder / f"{nid}.crt"),
                              str(folder / f"{nid}.key"), peers)
    return out


def node_certs(folder, addrs: dict[str, str], fleet: str = FLEET):
    """A fleet CA and one certificate per node id (``addrs``: id -> Raft
    address), written under ``folder``.  Returns (CA key, CA certificate,
    CA file, {id: (key file, certificate file)}) so a test can issue more."""
    ca_key, ca_cert = make_ca(fleet)
    (folder / "ca.crt").write_bytes(ca_cert)
    files = {nid: write_cert(folder, nid, *issue_node_cert(ca_key, ca_cert, fleet, nid, addr))
             for nid, addr in addrs.items()}
    return ca_key, ca_cert, str(folder / "ca.crt"), files


def write_cert(folder, name: str, key: bytes, cert: bytes) -> tuple[str, str]:
    """``name.key`` and ``name.crt`` under ``folder``; returns their paths."""
    (folder / f"{name}.key").write_bytes(key)
    (folder / f"{name}.crt").write_bytes(cert)
    return str(folder / f"{name}.key"), str(folder / f"{name}.crt")
