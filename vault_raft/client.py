"""The Python client: enroll, recover, change and delete, with typed errors.

The recovery code never leaves this process: it is the OPAQUE password.

:class:`TrustedClient` is what end users run: configured with ``client.json``
(a namespace, the operator's and the witness's public keys, bootstrap
endpoints) and a small state file, it fetches the fleet's signed bundle from a
node and verifies it (:func:`vault_raft.trust.bundle.verify`) *before* it
sends anything derived from the recovery code; it follows rotations to a new
fleet (see ``docs/trust.md``).  :class:`Client` talks to one fleet whose keys
it is given (``fleet.json`` pins them: the operator's own tools use it).  Both
OPAQUE flows pin the server key, so a node holding other keys is refused.

Every exception carries the CLI exit code that reports it::

    VaultError (1) > WrongCode (3), NoRecord (4), Unavailable (5) > ClockSkew (5),
                     Untrusted (6), NotAuthorized (7), AlreadyEnrolled (1), InvalidInput (2),
                     ServerError (1)
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable

from vault_raft import limits
from vault_raft.api import binding as P
from vault_raft.api import channel as CH
from vault_raft.api import flows
from vault_raft.api import http as wire
from vault_raft.crypto.errors import OpaqueError, SealError
from vault_raft.fleet.config import ConfigError, FleetInfo
from vault_raft.fleet.tenants import local_token_source
from vault_raft.trust import bundle as B

log = logging.getLogger("vault_raft.client")


class VaultError(Exception):
    exit_code = 1


class InvalidInput(VaultError):
    exit_code = 2


class WrongCode(VaultError):
    """The recovery code was wrong (or the user is not enrolled: by design
    the two cannot be told apart).  ``attempts_left`` says how many remain."""
    exit_code = 3

    def __init__(self, attempts_left: int):
        super().__init__(f"wrong recovery code; {attempts_left} attempt"
                         f"{'' if attempts_left == 1 else 's'} left")
        self.attempts_left = attempts_left


class NoRecord(VaultError):
    exit_code = 4


class Unavailable(VaultError):
    exit_code = 5


class ClockSkew(Unavailable):
    """Nodes refused requests as late that were sent just now: this machine's
    clock and the fleet's disagree, and learning the offset did not help."""


class AlreadyEnrolled(VaultError):
    exit_code = 1


class ServerError(VaultError):
    exit_code = 1


class NotAuthorized(VaultError):
    """The fleet refused the tenant token (missing, expired, for another user
    or fleet); nothing was proposed."""
    exit_code = 7


class Untrusted(VaultError):
    """The fleet could not be authenticated through its signed bundle, or a
    node through the channel key the fleet pins; nothing derived from the
    recovery code was sent.  ``reason`` is the specific
    :class:`~vault_raft.trust.bundle.TrustError` subclass."""
    exit_code = 6

    def __init__(self, message: str, reason: type = B.TrustError):
        super().__init__(message)
        self.reason = reason


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
        raise InvalidInput(f"user id must be 1..{P.USER_MAX} bytes")
    return u


def _code(code: str | bytes) -> bytes:
    c = code.encode() if isinstance(code, str) else code
    if not isinstance(c, bytes) or not 1 <= len(c) <= limits.CODE_MAX:
        raise InvalidInput(f"recovery code must be 1..{limits.CODE_MAX} bytes")
    return c


TokenSource = Callable[[bytes], str]  # user id -> a tenant token for that user


def token_source(token: str | TokenSource | None) -> TokenSource | None:
    """A fixed token (``--token``, ``VAULT_TOKEN``) or a function that fetches one."""
    if token is None or callable(token):
        return token
    if not isinstance(token, str) or not token:
        raise InvalidInput("a tenant token must be a non-empty string")
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
        # TLS 1.3 to every node, pinned to the fleet's CA; http:// endpoints only
        # for a fleet made with --insecure-http (the operator's debugging opt-in)
        self.channel = CH.for_fleet(self.fleet)
        if self.channel is None and any(not e.startswith("http://") for e in self.endpoints):
            raise Untrusted(f"fleet {self.fleet.fleet_id} pins no channel key: refusing to "
                            "talk to its nodes over a channel that cannot be authenticated",
                            B.UnpinnedChannel)

    # ------------------------------------------------------------ transport
    def _call(self, url: str, method: str, path: str, body: dict | None = None):
        try:
            return wire.call(url, method, path, body, self.request_timeout, self.channel)
        except CH.ChannelRefused as exc:  # nothing was sent; an impostor stops everything
            raise Untrusted(f"{url} is not a node of fleet {self.fleet.fleet_id}: {exc}; "
                            "nothing was sent", B.WrongChannelKey) from None
        except wire.WireError as exc:
            raise ServerError(str(exc)) from None

    def _with_auth(self, body: dict) -> dict:
        """A user request carries its tenant token (fetched per request: tokens
        are short-lived)."""
        if self.token is None or "user" not in body:
            return body
        try:
            return dict(body, auth=self.token(body["user"]))
        except VaultError:
            raise
        except Exception as exc:  # the app's hook failed: nothing was sent
            raise InvalidInput(f"could not get a tenant token: {exc}") from None

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
            except (OSError, http.client.HTTPException, ServerError) as exc:
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
                except (TimeoutError, socket.timeout, http.client.HTTPException, OSError) as exc:
                    last = f"{url}: {exc.__class__.__name__}"
                    if not retry_timeouts:
                        raise Unavailable(f"no answer from {url} in time; the attempt may have "
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
                    raise Unavailable(f"{url}: {out.get('message')}")
                break
            if time.monotonic() + delay >= deadline:
                if clock is not None:
                    raise ClockSkew(clock)
                raise Unavailable(f"no majority of the fleet reachable in time ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    @staticmethod
    def _raise(status: int, out: dict) -> None:
        msg = out.get("message", "error")
        if status == 401 and out.get("reason") == "token":
            raise NotAuthorized(msg)
        if status == 429:
            raise Unavailable(f"rate limited: {msg}")
        if status == 410:
            raise NoRecord(msg)
        if status == 409:
            raise AlreadyEnrolled(msg)
        if status == 400:
            raise InvalidInput(f"rejected by the node: {msg}")
        raise ServerError(f"HTTP {status}: {msg}")

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
            raise ServerError(f"registration response refused: {exc}") from None
        return record, out

    def _upload(self, user: bytes, secret: bytes, purpose: bytes, binding: bytes) -> bytes:
        if not isinstance(secret, bytes) or not 1 <= len(secret) <= P.MAX_SECRET:
            raise InvalidInput(f"secret must be 1..{P.MAX_SECRET} bytes")
        return flows.upload(self.fleet, user, purpose, binding, secret)

    def enroll(self, user: str | bytes, code: str | bytes, secret: bytes,
               max_attempts: int | None = None) -> int:
        """Enroll; returns the attempt limit. AlreadyEnrolled if a record is active."""
        u, c = _user(user), _code(code)
        m = self.fleet.default_max_attempts if max_attempts is None else max_attempts
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= limits.MAX_ATTEMPTS_LIMIT:
            raise InvalidInput(f"max attempts must be 1..{limits.MAX_ATTEMPTS_LIMIT}")
        if not isinstance(secret, bytes) or not 1 <= len(secret) <= P.MAX_SECRET:
            raise InvalidInput(f"secret must be 1..{P.MAX_SECRET} bytes")
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
            raise WrongCode(int(out.get("attempts_left", 0))) from None
        status, out = self.post("/v1/recover/finish", login.finish_body())
        if status == 401 and out.get("reason") != "token":
            raise ServerError(f"the fleet did not accept the login: {out.get('message')}")
        if status != 200:
            self._raise(status, out)
        try:
            secret = login.open_release(out)
        except (SealError, KeyError, TypeError) as exc:
            raise ServerError(f"released secret did not decrypt: {exc}") from None
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


# ------------------------------------------------------------ trusted client

@dataclass(frozen=True)
class ClientConfig:
    """``client.json``: everything a client is configured with."""
    namespace: str
    operator_key: bytes
    witness_key: bytes
    endpoints: tuple[str, ...]
    # how old a witness tree head may be and still vouch that a bundle is the newest
    max_head_age: int = B.MAX_HEAD_AGE

    @classmethod
    def load(cls, path: str) -> "ClientConfig":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"client config {path} not found (the operator's "
                              "'vault-raft operator init' writes one)") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"client config {path} unreadable: {exc}") from None
        try:
            if d["version"] != 1:
                raise ConfigError(f"client config {path}: unsupported version {d['version']}")
            age = d.get("max_head_age", B.MAX_HEAD_AGE)
            if isinstance(age, bool) or not isinstance(age, int) or not 60 <= age <= 7 * 86400:
                raise ValueError("max_head_age must be 60..604800 seconds")
            c = cls(str(d["namespace"]), bytes.fromhex(d["operator_key"]),
                    bytes.fromhex(d["witness_key"]), tuple(str(e) for e in d["endpoints"]), age)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"client config {path} is malformed: {exc}") from None
        if len(c.operator_key) != 32 or len(c.witness_key) != 32:
            raise ConfigError(f"client config {path}: keys must be 32 bytes")
        return c


def default_state_path(config_path: str) -> str:
    base = os.path.splitext(os.path.abspath(config_path))[0]
    return base + ".trust-state.json"


class TrustedClient:
    """A client that trusts a fleet only through its verified bundle."""

    def __init__(self, config: ClientConfig | str, state_path: str | None = None, *,
                 timeout: float = 10.0, request_timeout: float = 5.0,
                 clock=time.time, token: str | TokenSource | None = None):
        if isinstance(config, str):
            state_path = state_path or default_state_path(config)
            config = ClientConfig.load(config)
        if state_path is None:
            raise InvalidInput("a trust state path is needed to remember the log seen")
        self.config, self.state_path = config, state_path
        self.token = token_source(token)  # the tenant's token for each user request
        self.timeout, self.request_timeout, self.clock = timeout, request_timeout, clock
        self._clients: dict[B.FleetEntry, Client] = {}
        self.bundle: B.Bundle | None = None

    # ------------------------------------------------------------- trust
    # Failures that say "this node is behind", not "this answer is forged": the
    # client asks the next node, and reports them only if no node does better.
    _STALE = (B.ReplayedBundle, B.StaleTreeHead, B.LaggingLog)

    def verify_fleet(self) -> B.Bundle:
        """Fetch the bundle from some node and verify it; raise Untrusted if it
        fails, Unavailable if no node answers.

        A node that lags (a smaller tree head than the one saved, without a
        proof), serves an older or superseded epoch, or a tree head too old to
        vouch for freshness, is skipped: another node may be up to date.  Only
        when none is does the client stop, with exit code 6 (a lagging view
        reported as ``ForkedLog``).  Any other failure is evidence of forgery
        and stops at once."""
        try:
            state = B.TrustState.load(self.state_path)
        except B.TrustError as exc:
            raise Untrusted(str(exc)) from None
        urls = list(dict.fromkeys(state.endpoints + list(self.config.endpoints)))
        if not urls:
            raise Untrusted("no endpoints to fetch the fleet's bundle from")
        behind: list[tuple[B.TrustError, str]] = []
        last = "no node answered"
        for url in urls:
            try:  # TLS, but not pinned yet: the answer authenticates itself (verify below)
                status, out = wire.call(url, "GET", f"/v1/trust?since={state.tree_size}",
                                        timeout=self.request_timeout, channel=CH.UNPINNED)
            except (OSError, http.client.HTTPException, wire.WireError) as exc:
                last = f"{url}: {exc.__class__.__name__}"
                continue
            if status != 200:
                last = f"{url}: HTTP {status} {out.get('message')}"
                continue
            trial = B.TrustState(state.tree_size, state.tree_root, dict(state.epochs),
                                 list(state.endpoints))
            try:
                bundle = B.verify(B.SignedBundle.from_wire(out), self.config.operator_key,
                                  self.config.witness_key, trial, int(self.clock()),
                                  self.config.max_head_age)
            except self._STALE as exc:
                behind.append((exc, url))
                log.info("%s is behind (%s: %s); asking another node", url,
                         exc.__class__.__name__, exc)
                continue
            except B.TrustError as exc:
                raise Untrusted(f"fleet bundle from {url} rejected: "
                                f"{exc.__class__.__name__}: {exc}", type(exc)) from None
            if bundle.namespace != self.config.namespace:
                raise Untrusted(f"{url} serves namespace {bundle.namespace!r}, not "
                                f"{self.config.namespace!r}", B.BundleMalformed)
            trial.endpoints = [e for f in bundle.fleets for e in f.endpoints]
            if trial != state:
                trial.save(self.state_path)
            self.bundle = bundle
            return bundle
        if behind:
            # a lagging view outranks the others: no node proved the log seen is kept
            exc, url = next(((e, u) for e, u in behind if isinstance(e, B.LaggingLog)),
                            behind[0])
            reason = B.ForkedLog if isinstance(exc, B.LaggingLog) else type(exc)
            others = "; ".join(f"{u}: {e.__class__.__name__}" for e, u in behind if e is not exc)
            raise Untrusted(f"no node gave a current, consistent view of the fleet's bundle: "
                            f"{url}: {exc.__class__.__name__}: {exc}"
                            + (f" (also {others})" if others else ""), reason)
        raise Unavailable(f"could not fetch the fleet's bundle ({last})")

    def _client(self, entry: B.FleetEntry) -> Client:
        if entry not in self._clients:
            try:
                info = FleetInfo.from_entry(entry)
            except ConfigError as exc:
                raise Untrusted(str(exc), B.BundleMalformed) from None
            if info.channel_ca is None:
                raise Untrusted(f"the verified bundle names no channel key for fleet "
                                f"{entry.fleet_id} (a v1 bundle): refusing to talk to it over "
                                "a channel that cannot be authenticated; the operator must "
                                "publish a new epoch ('vault-raft fleet publish')",
                                B.UnpinnedChannel)
            plain = [e for e in entry.endpoints if not e.startswith("https://")]
            if plain:
                raise Untrusted(f"fleet {entry.fleet_id} lists endpoints without TLS "
                                f"({', '.join(plain)}): a fleet made with --insecure-http is "
                                "for local debugging through fleet.json only",
                                B.UnpinnedChannel)
            self._clients[entry] = Client(info, timeout=self.timeout,
                                          request_timeout=self.request_timeout,
                                          token=self.token)
        return self._clients[entry]

    # -------------------------------------------------------- operations
    def enroll(self, user, code, secret: bytes, max_attempts: int | None = None) -> int:
        u, c = _user(user), _code(code)
        return self._client(self.verify_fleet().current).enroll(u, c, secret, max_attempts)

    def _recover(self, u: bytes, c: bytes) -> tuple[Recovery, Client]:
        """Recover on the current fleet, else on a retiring one -- and then move
        the user to the current fleet (re-enroll, then delete the old record)."""
        bundle = self.verify_fleet()
        cur = self._client(bundle.current)
        try:
            return cur.recover(u, c), cur
        except (WrongCode, NoRecord) as exc:  # not here (fake answer), a wrong code, or
            if not bundle.retiring:           # another record destroyed under this id
                raise
            first, left = exc, [exc.attempts_left if isinstance(exc, WrongCode) else 0]
        found = False
        for entry in bundle.retiring:
            old = self._client(entry)
            try:
                rec = old.recover(u, c)
            except WrongCode as exc:
                left.append(exc.attempts_left)
                continue
            except NoRecord:
                continue
            found = True
            # Recovered: from here on this secret is never lost, whatever fails.
            try:
                cur.enroll(u, c, rec.secret, rec.max_attempts)
            except VaultError as exc:
                # Another record holds the id on the current fleet (or the fleet failed
                # us just now).  Return the secret and keep the old record, the only
                # copy; never guess again at a record that is not known to be ours.
                log.warning("recovered %r on retiring fleet %s but could not move it to the "
                            "current fleet (%s): the old record is kept; ask the operator",
                            u, entry.fleet_id, exc)
                return dataclasses.replace(rec, migration_conflict=True), old
            try:
                old._manage(u, rec, "delete", b"")
            except VaultError as exc:  # the old fleet is destroyed when it retires anyway
                log.warning("migrated %r but could not delete it on %s: %s", u,
                            entry.fleet_id, exc)
            log.info("moved %r from fleet %s to %s", u, entry.fleet_id, bundle.current.fleet_id)
            return dataclasses.replace(rec, migrated_from=entry.fleet_id), cur
        if isinstance(first, NoRecord) and not found:
            raise first
        raise WrongCode(min(left))

    def recover(self, user, code) -> Recovery:
        return self._recover(_user(user), _code(code))[0]

    def _manage(self, user, code, op: str, make_request) -> Recovery:
        u, c = _user(user), _code(code)
        rec, cli = self._recover(u, c)
        if rec.migration_conflict:
            raise VaultError("this user's record could not be moved to the current fleet "
                             "(another record holds the id there): no change is made; ask the "
                             "operator")
        if rec.migrated_from is not None:
            rec = cli.recover(u, c)  # a session on the fleet the record now lives on
        cli._manage(u, rec, op, *make_request(cli, u, rec))
        return rec

    def change_secret(self, user, code, new_secret: bytes) -> Recovery:
        return self._manage(user, code, "change_secret", lambda cli, u, rec: (
            cli._upload(u, new_secret, b"change_secret", rec.token),))

    def change_code(self, user, code, new_code) -> Recovery:
        new = _code(new_code)
        return self._manage(user, code, "change_code",
                            lambda cli, u, rec: cli._change_code_request(u, new))

    def delete(self, user, code) -> Recovery:
        return self._manage(user, code, "delete", lambda cli, u, rec: (b"",))
