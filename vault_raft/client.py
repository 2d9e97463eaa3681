"""The Python client: enroll, recover, change and delete, with typed errors.

The recovery code never leaves this process: it is the OPAQUE password.
The client trusts the fleet through ``fleet.json`` (fleet id, OPAQUE server
public key, enrollment HPKE key, KSF parameters): both OPAQUE flows pin the
server key, so a node holding other keys is refused.

Every exception carries the CLI exit code that reports it::

    VaultError (1) > WrongCode (3), NoRecord (4), Unavailable (5),
                     AlreadyEnrolled (1), InvalidInput (2), ServerError (1)
"""

from __future__ import annotations

import http.client
import random
import socket
import time
import urllib.parse
from dataclasses import dataclass

from . import protocol as P
from .crypto import opaque
from .crypto import seal as S
from .crypto.errors import OpaqueError, SealError
from .fleet.config import FleetInfo


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


class AlreadyEnrolled(VaultError):
    exit_code = 1


class ServerError(VaultError):
    exit_code = 1


@dataclass(frozen=True)
class Recovery:
    secret: bytes
    failed_attempts: int  # wrong codes since the previous success: warn the owner
    max_attempts: int
    token: bytes
    session_key: bytes


def _user(user: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    if not isinstance(u, bytes) or not 1 <= len(u) <= P.USER_MAX:
        raise InvalidInput(f"user id must be 1..{P.USER_MAX} bytes")
    return u


def _code(code: str | bytes) -> bytes:
    c = code.encode() if isinstance(code, str) else code
    if not isinstance(c, bytes) or not 1 <= len(c) <= 4096:
        raise InvalidInput("recovery code must be 1..4096 bytes")
    return c


class Client:
    def __init__(self, fleet: FleetInfo | str, *, timeout: float = 10.0,
                 request_timeout: float = 5.0, nodes: list[str] | None = None):
        self.fleet = FleetInfo.load(fleet) if isinstance(fleet, str) else fleet
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.endpoints = list(nodes or [n.api for n in self.fleet.nodes])
        self._next = random.randrange(len(self.endpoints))
        self.last_node: str | None = None

    # ------------------------------------------------------------ transport
    def _post_once(self, url: str, path: str, body: dict) -> tuple[int, dict]:
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=self.request_timeout)
        try:
            conn.request("POST", path, body=P.pack(body), headers={"Content-Type": P.CONTENT_TYPE})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            out = P.unpack(data)
        except Exception:
            out = None
        if not isinstance(out, dict):
            raise ServerError(f"{url}{path}: HTTP {resp.status} with a malformed body")
        return resp.status, out

    def post(self, path: str, body: dict, *, retry_timeouts: bool = True) -> tuple[int, dict]:
        """POST to some node; fail over on refusal or "no majority here".

        ``retry_timeouts=False`` (for counted operations): a node that took
        the request but did not answer in time may still commit it, so the
        client reports Unavailable instead of trying elsewhere.
        """
        deadline = time.monotonic() + self.timeout
        # The node refuses (unproposed) a request it reads after this time.
        body = dict(body, deadline_ms=int((time.time() + self.timeout) * 1000))
        delay, last = 0.05, "no node answered"
        while True:
            url = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            self.last_node = url
            try:
                status, out = self._post_once(url, path, body)
            except (ConnectionError, socket.gaierror) as exc:
                last = f"{url}: {exc.__class__.__name__}"
            except (TimeoutError, socket.timeout, http.client.HTTPException, OSError) as exc:
                last = f"{url}: {exc.__class__.__name__}"
                if not retry_timeouts:
                    raise Unavailable(f"no answer from {url} in time; the attempt may have "
                                      "been counted") from None
            else:
                if status != 503:
                    return status, out
                last = f"{url}: {out.get('message')}"
                if out.get("proposed") is not False and not retry_timeouts:
                    raise Unavailable(f"{url}: {out.get('message')}")
            if time.monotonic() + delay >= deadline:
                raise Unavailable(f"no majority of the fleet reachable in time ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    @staticmethod
    def _raise(status: int, out: dict) -> None:
        msg = out.get("message", "error")
        if status == 410:
            raise NoRecord(msg)
        if status == 409:
            raise AlreadyEnrolled(msg)
        if status == 400:
            raise InvalidInput(f"rejected by the node: {msg}")
        raise ServerError(f"HTTP {status}: {msg}")

    # ----------------------------------------------------------- operations
    def _register(self, user: bytes, code: bytes) -> bytes:
        reg, request = opaque.ClientRegistration.start(code, ksf=self.fleet.ksf)
        status, out = self.post("/v1/enroll/start", {"user": user, "request": request})
        if status != 200:
            self._raise(status, out)
        try:
            return reg.finish(out["response"], expected_server_public_key=
                              self.fleet.opaque_server_public_key).record
        except (OpaqueError, KeyError, TypeError) as exc:
            raise ServerError(f"registration response refused: {exc}") from None

    def _upload(self, user: bytes, secret: bytes, purpose: bytes) -> bytes:
        if not isinstance(secret, bytes) or not 1 <= len(secret) <= P.MAX_SECRET:
            raise InvalidInput(f"secret must be 1..{P.MAX_SECRET} bytes")
        return S.hpke_seal(self.fleet.enroll_public_key, secret,
                           P.upload_info(self.fleet.fleet_id, user, purpose))

    def enroll(self, user: str | bytes, code: str | bytes, secret: bytes,
               max_attempts: int | None = None) -> int:
        """Enroll; returns the attempt limit. AlreadyEnrolled if a record is active."""
        u, c = _user(user), _code(code)
        m = self.fleet.default_max_attempts if max_attempts is None else max_attempts
        if not isinstance(m, int) or not 1 <= m <= 100:
            raise InvalidInput("max attempts must be 1..100")
        record = self._register(u, c)
        status, out = self.post("/v1/enroll/finish", {
            "user": u, "record": record, "upload": self._upload(u, secret, b"enroll"),
            "max_attempts": m}, retry_timeouts=False)
        if status != 201:
            self._raise(status, out)
        return out["max_attempts"]

    def recover(self, user: str | bytes, code: str | bytes) -> Recovery:
        u, c = _user(user), _code(code)
        login, ke1 = opaque.ClientLogin.start(c, ksf=self.fleet.ksf, context=self.fleet.context)
        status, out = self.post("/v1/recover/start", {"user": u, "ke1": ke1},
                                retry_timeouts=False)
        if status != 200:
            self._raise(status, out)
        try:
            done = login.finish(out["ke2"], expected_server_public_key=
                                self.fleet.opaque_server_public_key)
        except OpaqueError:
            raise WrongCode(int(out.get("attempts_left", 0))) from None
        token = out["token"]
        status, out = self.post("/v1/recover/finish", {"user": u, "token": token, "ke3": done.ke3})
        if status == 401:
            raise ServerError(f"the fleet did not accept the login: {out.get('message')}")
        if status != 200:
            self._raise(status, out)
        try:
            secret = S.unseal(S.session_subkey(done.session_key, P.RELEASE_KEY),
                              out["secret_box"], P.release_ad(u, token))
        except (SealError, KeyError) as exc:
            raise ServerError(f"released secret did not decrypt: {exc}") from None
        return Recovery(secret, int(out["failed_attempts"]), int(out["max_attempts"]), token,
                        done.session_key)

    def _manage(self, u: bytes, rec: Recovery, op: str, payload: bytes) -> None:
        proof = S.mac(S.session_subkey(rec.session_key, P.MANAGE_KEY),
                      P.manage_message(op, u, rec.token, payload))
        status, out = self.post("/v1/manage", {"user": u, "op": op, "token": rec.token,
                                               "payload": payload, "proof": proof},
                                retry_timeouts=False)
        if status != 200:
            self._raise(status, out)

    def change_secret(self, user, code, new_secret: bytes) -> Recovery:
        u = _user(user)
        rec = self.recover(u, code)
        self._manage(u, rec, "change_secret", self._upload(u, new_secret, b"change_secret"))
        return rec

    def change_code(self, user, code, new_code) -> Recovery:
        u, new = _user(user), _code(new_code)
        rec = self.recover(u, code)
        self._manage(u, rec, "change_code", self._register(u, new))
        return rec

    def delete(self, user, code) -> Recovery:
        u = _user(user)
        rec = self.recover(u, code)
        self._manage(u, rec, "delete", b"")
        return rec
