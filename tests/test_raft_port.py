"""pysyncobj's admin and readonly side doors on the Raft port are closed, even to a
client that holds the cluster secret (any fleet node could).  A positive control
shows the same request succeeds against a replica without our refusal, so the
test would notice if the side door reopened."""
import time

import pysyncobj.utility as U
import pytest
from conftest import free_base_port
from pysyncobj.transport import TCPTransport

from vault_raft.crypto.seal import FrameCipher
from vault_raft.raft.replica import RaftSettings, VaultReplica, _VaultTransport

SECRET = "0123456789abcdef" * 4


class _PermissiveTransport(_VaultTransport):
    """The control: pysyncobj's own handling of readonly/utility requests."""

    def _onIncomingMessageReceived(self, conn, message):
        return TCPTransport._onIncomingMessageReceived(self, conn, message)


def _single_node(tmp_path, transport):
    addr = f"127.0.0.1:{free_base_port(1) + 1}"
    rep = VaultReplica(addr, [], str(tmp_path / transport.__name__), SECRET,
                       settings=RaftSettings(), transport_class=transport)
    deadline = time.monotonic() + 10
    while not rep.status().get("role") == "leader":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return addr, rep


@pytest.fixture
def credentialed_utility(monkeypatch):
    monkeypatch.setattr(U, "getEncryptor", lambda password: FrameCipher(password))
    return U.TcpUtility(password=SECRET, timeout=3)


def test_status_utility_refused_even_with_the_cluster_secret(tmp_path, credentialed_utility):
    addr, rep = _single_node(tmp_path, _VaultTransport)
    try:
        with pytest.raises(U.UtilityException):
            credentialed_utility.executeCommand(addr, ["status"])
        with pytest.raises(U.UtilityException):
            credentialed_utility.executeCommand(addr, ["add", "127.0.0.1:1"])
    finally:
        rep.destroy_synchronous()


def test_control_without_the_refusal_the_utility_works(tmp_path, credentialed_utility):
    addr, rep = _single_node(tmp_path, _PermissiveTransport)
    try:
        status = credentialed_utility.executeCommand(addr, ["status"])
        assert status["state"] == 2  # leader: the side door is real without our refusal
    finally:
        rep.destroy_synchronous()
