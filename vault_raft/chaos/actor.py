"""The campaign's clients: one :class:`Actor` per client process, each request
sent to a node of its choice over the real API and its outcome recorded in
the :class:`History` (``info`` when it may or may not have taken effect)."""

from __future__ import annotations

import http.client
import random
import time

from vault_raft.api import flows
from vault_raft.api import http as wire
from vault_raft.api.channel import ChannelError, for_fleet
from vault_raft.chaos.history import History, Op
from vault_raft.core.results import Code
from vault_raft.crypto.errors import OpaqueError
from vault_raft.errors import VaultRaftError
from vault_raft.fleet.config import FleetInfo


class _Unsent(VaultRaftError):
    """The request never left: certainly no effect."""


class Actor:
    """One client process of the history: picks a node per request, records outcomes."""

    def __init__(self, name: str, fleet: FleetInfo, hist: History, rng: random.Random,
                 urls: dict[str, str], timeout: float = 4.0, token=None):
        self.name, self.fleet, self.hist, self.rng = name, fleet, hist, rng
        self.urls = urls
        self.timeout = timeout
        self.channel = for_fleet(fleet)  # TLS 1.3 pinned to the fleet CA, as clients connect
        self.token = token  # user -> the tenant token its requests carry

    def _post(self, nid: str, path: str, body: dict) -> tuple[int, dict]:
        body = dict(body, deadline_ms=int((time.time() + self.timeout) * 1000))
        if self.token is not None and "user" in body:
            body["auth"] = self.token(body["user"])
        try:
            return wire.call(self.urls[nid], "POST", path, body, self.timeout, self.channel)
        except ChannelError as exc:  # TCP or the TLS handshake: a failure sent nothing
            raise _Unsent(str(exc)) from None
        except wire.WireError as exc:  # an answer that is not a msgpack map
            if exc.status is None:  # (a malformed URL)
                raise
            return exc.status, {}

    def call(self, op: Op, path: str, body: dict):
        """POST and classify: returns (status, out) or records fail/info and returns None."""
        assert op.node is not None, "an actor's operation names the node it goes to"
        try:
            st, out = self._post(op.node, path, body)
        except _Unsent:
            self.hist.finish(op, "fail", dict(op.value or {}, error="unreachable"))
            return None
        except (OSError, http.client.HTTPException):
            self.hist.finish(op, "info")
            return None
        if st == 503:
            if out.get("proposed") is False:
                self.hist.finish(op, "fail", dict(op.value or {}, error="unavailable"))
            else:
                self.hist.finish(op, "info")
            return None
        return st, out

    def node(self) -> str:
        return self.rng.choice(sorted(self.urls))

    # -- operations
    def enroll(self, user: str, code: bytes, secret: bytes, max_attempts: int) -> str:
        """Returns 'ok', Code.EXISTS, or 'unknown'/'failed' (the outcome is not known,
        or it failed)."""
        reg = flows.Registration(self.fleet, user.encode(), code)
        nid = self.node()
        try:
            st, out = self._post(nid, "/v1/enroll/start", reg.start_body())
        except (OSError, http.client.HTTPException, _Unsent):
            return "failed"
        if st != 200:
            return "failed"
        reg.finish(out)
        op = self.hist.invoke(self.name, "enroll", user, nid,
                              {"max_attempts": max_attempts, "secret": secret.hex()})
        r = self.call(op, "/v1/enroll/finish", reg.enroll_body(secret, max_attempts))
        if r is None:
            return "unknown" if op.outcome == "info" else "failed"
        st, out = r
        if st == 201:
            self.hist.finish(op, "ok")
            return "ok"
        if st == 409:
            self.hist.finish(op, "ok", dict(op.value, error=Code.EXISTS))
            return Code.EXISTS
        self.hist.finish(op, "fail", dict(op.value, error=out.get("error")))
        return "failed"

    def begin(self, user: str, code: bytes) -> tuple[flows.Login, dict] | None:
        """A counted attempt. Returns (login, out) when a KE2 arrived, else None."""
        login = flows.Login(self.fleet, user.encode(), code)
        op = self.hist.invoke(self.name, "begin", user, self.node())
        r = self.call(op, "/v1/recover/start", login.start_body())
        if r is None:
            return None
        st, out = r
        if st == 200:
            self.hist.finish(op, "ok", {"attempts_left": out["attempts_left"]})
            return login, out
        if st == 410:
            self.hist.finish(op, "ok", {"destroyed": True})
            return None
        self.hist.finish(op, "fail", {"error": out.get("error"), "status": st})
        return None

    def complete(self, user: str, login: flows.Login, out: dict,
                 f: str = "complete") -> flows.Login | None:
        """The recovery's second half; returns ``login`` when the secret arrived."""
        try:
            login.finish(out)
        except OpaqueError:
            return None  # wrong code: the guess ended at KE2
        op = self.hist.invoke(self.name, f, user, self.node())
        r = self.call(op, "/v1/recover/finish", login.finish_body())
        if r is None:
            return None
        st, res = r
        if st == 200:
            secret = login.open_release(res)
            self.hist.finish(op, "ok", {"failed_attempts": res["failed_attempts"],
                                        "secret": secret.hex()})
            return login
        if st == 410:
            self.hist.finish(op, "ok", {"destroyed": True})
            return None
        self.hist.finish(op, "fail", {"error": res.get("error"), "status": st})
        return None

    def write(self, user: str, login: flows.Login, secret: bytes) -> None:
        body = login.change_secret_body(secret)
        op = self.hist.invoke(self.name, "write", user, self.node(), {"secret": secret.hex()})
        r = self.call(op, "/v1/manage", body)
        if r is None:
            return
        st, res = r
        self.hist.finish(op, "ok" if st == 200 else "fail",
                         None if st == 200 else dict(op.value, error=res.get("error")))
