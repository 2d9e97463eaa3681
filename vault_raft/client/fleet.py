"""The client of one fleet whose keys it is given (:class:`Client`;
``fleet.json`` pins them: the operator's own tools use it): enroll, recover,
change and delete, failing over between the fleet's nodes.  The OPAQUE flows
pin the server key, so a node holding other keys is refused."""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from vault_raft import limits
from vault_raft.api import binding as P
from vault_raft.api import channel as CH
from vault_raft.api import flows
from vault_raft.api import http as wire
from vault_raft.client import errors as E
from vault_raft.crypto.errors import OpaqueError, SealError
from vault_raft.fleet.config import FleetInfo
from vault_raft.fleet.tenants import local_token_source
from vault_raft.trust import bundle as B

log = logging.getLogger("vault_raft.client")


@dataclass(frozen=True)
class Recovery:
    secret: bytes
    failed_attempts: int  # wrong codes since the previous success: warn the owner
    max_attempts: int
    token: bytes
    session_key: bytes
    fleet_id: str = ""
    migrated_from: str | None = None  # the retiring fleet this recovery moved the user from
    migration_conflict: bool = False  # recovered on a retiring fleet, but not moved (see log)


def _user(user: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    if not isinstance(u, bytes) or not 1 <= len(u) <= P.USER_MAX:
        raise E.InvalidInput(f"user id must be 1..{P.USER_MAX} bytes")
    return u


def _code(code: str | bytes) -> bytes:
    c = code.encode() if isinstance(code, str) else code
    if not isinstance(c, bytes) or not 1 <= len(c) <= limits.CODE_MAX:
        raise E.InvalidInput(f"recovery code must be 1..{limits.CODE_MAX} bytes")
    return c


TokenSource = Callable[[bytes], str]  # user id -> a tenant token for that user


def token_source(token: str | TokenSource | None) -> TokenSource | None:
    """A fixed token (``--token``, ``VAULT_TOKEN``) or a function that fetches one."""
    if token is None or callable(token):
        return token
    if not isinstance(token, str) or not token:
        raise E.InvalidInput("a tenant token must be a non-empty string")
    return lambda user: token


class Client:
    def __init__(self, fleet: FleetInfo | str, *, timeout: float = 10.0,
                 request_timeout: float = 5.0, nodes: list[str] | None = None,
                 token: str | TokenSource | None = None):
        """``token``: the tenant token sent with every user request, or a
        function ``user -> token`` (an app's hook to its own server).  Given a
        fleet directory's ``fleet.json`` and no token, the operator's tools mint
        tokens with the directory's ``local`` tenant key, when it has one."""
        if isinstance(fleet, str) and token is None:
            fleet_dir = os.path.dirname(os.path.abspath(fleet))
            info = FleetInfo.load(fleet)
            token = local_token_source(fleet_dir, info.fleet_id)
            fleet = info
        self.token = token_source(token)
        self.fleet = FleetInfo.load(fleet) if isinstance(fleet, str) else fleet
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.endpoints = list(nodes or [n.api for n in self.fleet.nodes])
        self._next = random.randrange(len(self.endpoints))
        self.last_node: str | None = None
        self.answer_lost = False
        # TLS 1.3 to every node, pinned to the fleet's CA; http:// endpoints only
        # for a fleet made with --insecure-http (the operator's debugging opt-in)
        self.channel = CH.for_fleet(self.fleet)
        if self.channel is None and any(not e.startswith("http://") for e in self.endpoints):
            raise E.Untrusted(f"fleet {self.fleet.fleet_id} pins no channel key: refusing to "
                            "talk to its nodes over a channel that cannot be authenticated",
                            B.UnpinnedChannel)

    # ------------------------------------------------------------ transport
    def _call(self, url: str, method: str, path: str, body: dict | None = None):
        try:
            return wire.call(url, method, path, body, self.request_timeout, self.channel)
        except CH.ChannelRefused as exc:  # nothing was sent; an impostor stops everything
            raise E.Untrusted(f"{url} is not a node of fleet {self.fleet.fleet_id}: {exc}; "
                            "nothing was sent", B.WrongChannelKey) from None
        except wire.WireError as exc:
            raise E.ServerError(str(exc)) from None

    def _with_auth(self, body: dict) -> dict:
        """A user request carries its tenant token (fetched per request: tokens
        are short-lived)."""
        if self.token is None or "user" not in body:
            return body
        try:
            return dict(body, auth=self.token(body["user"]))
        except E.VaultError:
            raise
        except Exception as exc:  # the app's hook failed: nothing was sent
            raise E.InvalidInput(f"could not get a tenant token: {exc}") from None

    def _post_once(self, url: str, path: str, body: dict) -> tuple[int, dict]:
        return self._call(url, "POST", path, body)

    #: A node refusing a request as late whose clock moved by more than this
    #: against ours since its last reply: a clock problem, not a slow fleet.
    CLOCK_TOLERANCE_MS = 500

    def _node_clock(self, url: str) -> float:
        """The node's clock minus ours (ms): from its last reply, else asked
        for (``GET /v1/status``, which proposes nothing)."""
        off = wire.clock_offset(url)
        if off is None:
            try:
                self._call(url, "GET", "/v1/status")
            except (OSError, http.client.HTTPException, E.ServerError) as exc:
                raise CH.ChannelError(f"{url}: no status: {exc.__class__.__name__}") from None
            off = wire.clock_offset(url)
        return off or 0.0

    def post(self, path: str, body: dict, *, retry_timeouts: bool = True) -> tuple[int, dict]:
        """POST to some node; fail over on refusal or "no majority here".

        Every request carries ``deadline_ms``, when this client stops waiting
        for it, in the node's clock (learned from the ``Vault-Time`` header of
        its replies): a node that reads the request later refuses it, proposing
        nothing.  A refusal as late of a request sent just now means the
        clocks disagree: the offset is learned again from that refusal and the
        request sent again (nothing was proposed).

        A failure to connect or to complete the TLS handshake sent nothing, so
        the request goes to the next node.  ``retry_timeouts=False`` (for
        counted operations): a node that took the request but did not answer
        (in time, or at all) may still commit it, so the client reports
        Unavailable instead of trying elsewhere; so does a 503 that does not
        say ``proposed: false``.
        """
        body = self._with_auth(body)
        self.answer_lost = False  # a node took this request and did not answer in time
        deadline = time.monotonic() + self.timeout
        delay, last, clock = 0.05, "no node answered", None
        while True:
            url = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            self.last_node = url
            for _ in range(2):  # once more on this node after a clock correction
                try:
                    offset = self._node_clock(url)
                    budget = max(0.05, min(self.request_timeout, deadline - time.monotonic()))
                    sent = time.monotonic()
                    status, out = self._post_once(url, path, dict(body, deadline_ms=int(
                        time.time() * 1000 + offset + budget * 1000)))
                except (CH.ChannelError, socket.gaierror) as exc:  # nothing was sent
                    last = f"{url}: {exc.__class__.__name__}"
                    break
                except (TimeoutError, http.client.HTTPException, OSError) as exc:
                    last = f"{url}: {exc.__class__.__name__}"
                    self.answer_lost = True
                    if not retry_timeouts:
                        raise E.Unavailable(f"no answer from {url} in time; the attempt may have "
                                          "been counted") from None
                    break
                if status != 503:
                    return status, out
                last = f"{url}: {out.get('message')}"
                if out.get("error") == P.EXPIRED:
                    # the refusal's Vault-Time taught us the node's clock again
                    skew = (wire.clock_offset(url) or offset) - offset
                    if abs(skew) > self.CLOCK_TOLERANCE_MS:
                        clock = (f"{url} refused a request sent {time.monotonic() - sent:.1f} s "
                                 f"before as late: this machine's clock and the node's "
                                 f"disagree (it moved by {skew / 1000:+.1f} s since the "
                                 "node's last reply); nothing was proposed")
                        if time.monotonic() + 0.05 < deadline:
                            continue  # send it again with the deadline in the new offset
                    break
                if out.get("proposed") is not False and not retry_timeouts:
                    raise E.Unavailable(f"{url}: {out.get('message')}")
                break
            if time.monotonic() + delay >= deadline:
                if clock is not None:
                    raise E.ClockSkew(clock)
                raise E.Unavailable(f"no majority of the fleet reachable in time ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    @staticmethod
    def _raise(status: int, out: dict) -> None:
        msg = out.get("message", "error")
        if status == 401 and out.get("reason") == "token":
            raise E.NotAuthorized(msg)
        if status == 429:
            raise E.Unavailable(f"rate limited: {msg}")
        if status == 410:
            raise E.NoRecord(msg)
        if status == 409:
            raise E.AlreadyEnrolled(msg)
        if status == 400:
            raise E.InvalidInput(f"rejected by the node: {msg}")
        raise E.ServerError(f"HTTP {status}: {msg}")

    # ----------------------------------------------------------- operations
    def _register(self, user: bytes, code: bytes, purpose: str = "enroll") -> tuple[bytes, dict]:
        """Run OPAQUE registration; returns (record, enroll/start reply).  The
        reply's single-use ``ticket`` (and its ``nonce``) go with the record."""
        reg = flows.Registration(self.fleet, user, code, purpose)
        status, out = self.post("/v1/enroll/start", reg.start_body())
        if status != 200:
            self._raise(status, out)
        try:
            record = reg.finish(out)
            if not isinstance(out["ticket"], bytes) or not isinstance(out["nonce"], bytes):
                raise TypeError("ticket and nonce must be bytes")
        except (OpaqueError, KeyError, TypeError) as exc:
            raise E.ServerError(f"registration response refused: {exc}") from None
        return record, out

    def _upload(self, user: bytes, secret: bytes, purpose: bytes, binding: bytes) -> bytes:
        if not isinstance(secret, bytes) or not 1 <= len(secret) <= P.MAX_SECRET:
            raise E.InvalidInput(f"secret must be 1..{P.MAX_SECRET} bytes")
        return flows.upload(self.fleet, user, purpose, binding, secret)

    def enroll(self, user: str | bytes, code: str | bytes, secret: bytes,
               max_attempts: int | None = None) -> int:
        """Enroll; returns the attempt limit. AlreadyEnrolled if a record is active."""
        u, c = _user(user), _code(code)
        m = self.fleet.default_max_attempts if max_attempts is None else max_attempts
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= limits.MAX_ATTEMPTS_LIMIT:
            raise E.InvalidInput(f"max attempts must be 1..{limits.MAX_ATTEMPTS_LIMIT}")
        if not isinstance(secret, bytes) or not 1 <= len(secret) <= P.MAX_SECRET:
            raise E.InvalidInput(f"secret must be 1..{P.MAX_SECRET} bytes")
        record, start = self._register(u, c)
        status, out = self.post("/v1/enroll/finish", flows.enroll_finish_body(
            self.fleet, u, record, start, secret, m), retry_timeouts=False)
        if status != 201:
            self._raise(status, out)
        return out["max_attempts"]

    def recover(self, user: str | bytes, code: str | bytes) -> Recovery:
        u, c = _user(user), _code(code)
        login = flows.Login(self.fleet, u, c)
        status, out = self.post("/v1/recover/start", login.start_body(), retry_timeouts=False)
        if status != 200:
            self._raise(status, out)
        try:
            login.finish(out)
        except OpaqueError:
            raise E.WrongCode(int(out.get("attempts_left", 0))) from None
        status, out = self.post("/v1/recover/finish", login.finish_body())
        if status == 401 and out.get("reason") != "token":
            if self.answer_lost:
                # A node that did not answer in time may have completed this
                # attempt (released the secret, reset the count): the next
                # node then finds it used.  Nothing is lost; recover again.
                raise E.Unavailable("a node did not answer the login's last step in time and "
                                    "the attempt is now used (that node may have completed "
                                    "it; no wrong code was counted): recover again")
            raise E.ServerError(f"the fleet did not accept the login: {out.get('message')}")
        if status != 200:
            self._raise(status, out)
        try:
            secret = login.open_release(out)
        except (SealError, KeyError, TypeError) as exc:
            raise E.ServerError(f"released secret did not decrypt: {exc}") from None
        return Recovery(secret, int(out["failed_attempts"]), int(out["max_attempts"]),
                        login.token, login.session_key, self.fleet.fleet_id)

    def _manage(self, u: bytes, rec: Recovery, op: str, payload: bytes,
                ticket: bytes = b"") -> None:
        status, out = self.post("/v1/manage", flows.manage_body(u, rec.session_key, rec.token,
                                                                op, payload, ticket),
                                retry_timeouts=False)
        if status != 200:
            self._raise(status, out)

    def _change_code_request(self, u: bytes, new_code: bytes) -> tuple[bytes, bytes]:
        """(payload, ticket) of a change_code: a new record under a fresh key."""
        record, start = self._register(u, new_code, "change_code")
        return record, start["ticket"]

    def change_secret(self, user, code, new_secret: bytes) -> Recovery:
        u = _user(user)
        rec = self.recover(u, code)
        self._manage(u, rec, "change_secret",
                     self._upload(u, new_secret, b"change_secret", rec.token))
        return rec

    def change_code(self, user, code, new_code) -> Recovery:
        u, new = _user(user), _code(new_code)
        rec = self.recover(u, code)
        self._manage(u, rec, "change_code", *self._change_code_request(u, new))
        return rec

    def delete(self, user, code) -> Recovery:
        u = _user(user)
        rec = self.recover(u, code)
        self._manage(u, rec, "delete", b"")
        return rec


