"""A login's last step whose answer is lost: the node that did not answer may
have completed the attempt, so the next node finds it used.  The client says
"unavailable, recover again" (nothing is lost, no wrong code was counted),
not "the fleet did not accept the login"."""

from __future__ import annotations

import pytest

from vault_raft import client as C
from vault_raft.client import fleet as F
from vault_raft.fleet.create import init_fleet


class _Login:
    """Stands in for the OPAQUE flow: the test is about the transport."""

    def __init__(self, *args):
        self.token, self.session_key = b"t", b"k"

    def start_body(self):
        return {"user": b"bob", "ke1": b""}

    def finish(self, reply):
        return None

    def finish_body(self):
        return {"user": b"bob", "token": b"t", "ke3": b""}


@pytest.fixture
def client(tmp_path, monkeypatch):
    path = init_fleet(str(tmp_path / "fleet"), 3, base_port=31700, check_ports=False)
    cli = C.Client(path, token="unused")
    monkeypatch.setattr(F.flows, "Login", _Login)
    monkeypatch.setattr(cli, "_node_clock", lambda url: 0)
    return cli


def _nodes(cli, finish_replies):
    """Fake nodes: recover/start succeeds; recover/finish answers in turn."""
    replies = iter(finish_replies)

    def post_once(url, path, body):
        if path == "/v1/recover/start":
            return 200, {"ke2": b"", "token": b"t", "attempts_left": 9}
        r = next(replies)
        if isinstance(r, BaseException):
            raise r
        return r

    return post_once


USED = (401, {"error": "unauthorized", "message": "attempt expired, already used or superseded"})


def test_a_lost_answer_then_used_is_unavailable(client, monkeypatch):
    monkeypatch.setattr(client, "_post_once", _nodes(client, [TimeoutError("read"), USED]))
    with pytest.raises(C.Unavailable, match="recover again"):
        client.recover("bob", "code")


def test_used_without_a_lost_answer_is_still_a_server_error(client, monkeypatch):
    monkeypatch.setattr(client, "_post_once", _nodes(client, [USED]))
    with pytest.raises(C.ServerError):
        client.recover("bob", "code")


def test_the_flag_is_per_request(client, monkeypatch):
    monkeypatch.setattr(client, "_post_once", _nodes(client, [TimeoutError("read"), USED, USED]))
    with pytest.raises(C.Unavailable):
        client.recover("bob", "code")
    with pytest.raises(C.ServerError):
        client.recover("bob", "code")

