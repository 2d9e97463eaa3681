"""The Raft port against hostile connections: unidentified connections are
capped and timed out, refusals are logged (WARNING, the peer's address, a few
lines), and an accept that fails for want of file descriptors backs off
instead of spinning."""
import errno
import logging
import socket
import time

import pytest
from test_mtls import (  # noqa: F401 -- fixtures
    _answer_to,
    _as_node,
    _vote_request,
    n1,
    pki,
)

from vault_raft.ops.cluster import wait_until
from vault_raft.raft import _pysyncobj as pso


def _transport(rep):
    return pso.transport(rep)


def _raft_addr(pki):
    host, port = pki["addrs"]["n1"].rsplit(":", 1)
    return host, int(port)


def _lines(caplog, text):
    return [r for r in caplog.records if r.name == "vault_raft.tls" and text in r.getMessage()]


class _StarvedServer:
    """The listening socket, except that accept() fails with EMFILE (the
    process has run out of file descriptors) while ``starved`` is set."""

    def __init__(self, sock):
        self.sock, self.starved, self.calls = sock, True, 0

    def fileno(self):
        return self.sock.fileno()

    def accept(self):
        self.calls += 1
        if self.starved:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def close(self):
        self.sock.close()


def test_accept_out_of_files_backs_off_and_logs_a_few_lines(pki, n1, caplog):
    caplog.set_level(logging.INFO, logger="vault_raft.tls")
    t = _transport(n1)
    fake = _StarvedServer(t._server)
    t._server = fake
    waiting = [socket.create_connection(_raft_addr(pki)) for _ in range(3)]  # never accepted
    time.sleep(2.0)  # a duration: how often a starved port retries in 2 s
    # a tight loop makes tens of thousands of calls (and as many log lines)
    assert fake.calls <= 12, fake.calls
    assert len(_lines(caplog, "cannot accept")) <= 3
    assert t.counts["accept_pauses"] >= 3
    fake.starved = False  # the files are back: the port accepts again
    s = _as_node(pki, "n2")
    s.sendall(_vote_request(77))
    assert _answer_to(s, 77) is not None
    s.close()
    for w in waiting:
        w.close()


def test_unidentified_connections_are_capped_timed_out_and_logged(pki, n1, caplog):
    caplog.set_level(logging.INFO, logger="vault_raft.tls")
    t = _transport(n1)
    cap = t.MAX_PENDING
    idle = [socket.create_connection(_raft_addr(pki)) for _ in range(cap + 20)]
    garbage = socket.create_connection(_raft_addr(pki))
    garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
    st = wait_until(lambda: (s := t.stats())["evicted"] >= 20 and s, 5, what="evictions")
    assert st["pending"] <= cap, st
    assert st["evicted"] >= 20, st
    # a fleet node still gets in, and is answered
    s = _as_node(pki, "n2")
    s.sendall(_vote_request(88))
    assert _answer_to(s, 88) is not None
    # the idle ones are closed after connectionTimeout (1.5 s)
    time.sleep(2.5)  # past connectionTimeout: then every idle one must read as closed
    for c in idle:
        c.settimeout(2)
        try:
            assert c.recv(1) == b""
        except ConnectionResetError:
            pass
        c.close()
    refusals = [r for r in caplog.records if r.name == "vault_raft.tls"
                and r.levelno >= logging.WARNING and "Raft port: refused" in r.getMessage()]
    assert refusals, [r.getMessage() for r in caplog.records]
    assert any("127.0.0.1:" in r.getMessage() for r in refusals)
    assert any("TLS handshake failed" in r.getMessage() for r in refusals)
    assert any("handshake timed out" in r.getMessage() for r in refusals)
    assert len(caplog.records) <= 15, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info]
    s.close()
    garbage.close()


@pytest.mark.parametrize("kind", ["plain", "wrong-fleet"])
def test_a_refused_peer_is_logged_at_warning_with_its_address(pki, n1, caplog, kind):
    from test_mtls import _tls_client, _write

    from vault_raft.raft.pki import issue_node_cert, make_ca
    caplog.set_level(logging.INFO, logger="vault_raft.tls")
    if kind == "plain":
        c = socket.create_connection(_raft_addr(pki))
        c.sendall(b"\x16\x03\x01\x00\x05hello")
        c.settimeout(3)
        try:
            c.recv(100)
        except OSError:
            pass
    else:  # a certificate from another fleet's CA, for n2's address
        k, cert = make_ca("other")
        nk, nc = issue_node_cert(k, cert, "other", "n2", pki["addrs"]["n2"])
        try:  # (it trusts our CA: the refusal is the node's)
            c = _tls_client(pki, _write(pki["tmp"] / "o.crt", nc), _write(pki["tmp"] / "o.key", nk))
            c.settimeout(3)
            c.recv(100)
        except (OSError, ValueError):
            pass
    time.sleep(0.3)  # exactly one line: a second one, if any, would come within this time
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING
             and "Raft port: refused 127.0.0.1:" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
