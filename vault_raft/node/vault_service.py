"""The vault's API operations on a node: enroll, recover, manage, status and
admin, each a request body in and a reply map out.

The order of events for a guess is the point of this module::

    KE1 arrives -> validate -> commit begin_attempt (majority, durable)
                -> only now: KE2 for the *committed* record -> reply

(A candidate KE2 is computed while the entry is in flight and kept in the
process; it is sent only if the committed record is the one it was made from.)

Nothing about a guess (not even "unknown user") is revealed before the
commit; a node that cannot reach a majority answers 503 and proposes
nothing.  Any failure of the commit (timeout, leader change, discarded
entry) is reported as 503 "unavailable": the attempt may still be counted
later, never the reverse.

The operator's requests (status, admin) are :mod:`vault_raft.node.admin_requests`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from vault_raft.api import binding as P
from vault_raft.core import machine as M
from vault_raft.core import results as R
from vault_raft.core.results import Code
from vault_raft.crypto import group, opaque
from vault_raft.crypto import seal as S
from vault_raft.crypto.errors import OpaqueError, SealError
from vault_raft.fleet import tenants as T
from vault_raft.fleet.config import NodeConfig, opaque_context
from vault_raft.fleet.keystore import Keystore
from vault_raft.fleet.tenant_gate import Gate
from vault_raft.node import admin_requests
from vault_raft.node.admin import AdminVerifier
from vault_raft.node.bridge import commit
from vault_raft.node.httpguard import ApiServer
from vault_raft.node.metrics import NodeMetrics
from vault_raft.node.replica import VaultReplica
from vault_raft.node.validate import ApiError, binary, is_integer, now_ms, user_id

log = logging.getLogger("vault_raft.node.vault_service")

TOKEN_LIFETIME_MS = M.PROOF_TTL_MS
TICKET_LIFETIME_MS = M.TICKET_TTL_MS


class VaultService:
    def __init__(self, cfg: NodeConfig, keystore: Keystore, replica: VaultReplica,
                 commit_timeout: float = 3.0, metrics: NodeMetrics | None = None):
        self.cfg = cfg
        self.ks = keystore
        self.replica = replica
        self.setup = keystore.opaque_setup()
        self.context = opaque_context(keystore.fleet_id)
        self.commit_timeout = commit_timeout
        # An unknown user looks like one enrolled with the fleet's published
        # default limit, after one wrong code.
        self.fake_attempts_left = cfg.default_max_attempts - 1
        self.peer_ids = dict(cfg.peer_ids)
        self.admin_auth = AdminVerifier(cfg.admin_key, keystore.fleet_id, cfg.node_id)
        self.gate = Gate(cfg.dir, keystore.fleet_id, cfg.admin_key,
                           required=cfg.tenants != "off")
        if not self.gate.enforced:
            log.warning("tenant tokens are not checked on this node (%s): anyone who reaches "
                        "it may act for any user", "node.json says tenants: off"
                        if cfg.tenants == "off" else "it has no admin key")
        elif self.gate.tenants is None:
            log.error("%s; user requests are answered 503 until there is one",
                      self.gate.error)
        self.stats = {"commits": 0, "unavailable": 0, "ke2": 0}
        self.metrics = metrics or NodeMetrics(replica, cfg.node_id)
        self.http: ApiServer | None = None  # the API listener (connection statistics)
        self.nofile: dict | None = None  # open-file limits (limits.raise_nofile_limit)

    # ------------------------------------------------------------- commit
    async def commit(self, op: str, deadline_ms: Any = None, meanwhile=None,
                     **fields: Any) -> dict:
        """Propose a command and wait until this node applied it (majority commit).

        ``deadline_ms`` is the client's give-up time *in this node's clock*
        (clients learn the offset from the ``Vault-Time`` header of any reply):
        a request that waited past it (e.g. in a paused node's socket buffer)
        is refused unproposed, so a client that reported "unavailable" is not
        charged an attempt later.  The refusal says by how much it was late
        (``late_ms``): a client that sent it just now learns that its clock,
        not the fleet, is the problem.
        """
        if deadline_ms is not None:
            if not is_integer(deadline_ms) or not 0 <= deadline_ms < 1 << 63:
                raise ApiError(400, "deadline_ms must be an integer: Unix ms in the node's "
                                    f"clock (the {P.TIME_HEADER} header of any reply)")
            late = now_ms() - deadline_ms
            if late > 0:
                raise ApiError(503, f"request read {late} ms after its deadline_ms (in this "
                                    f"node's clock, sent in every reply's {P.TIME_HEADER} "
                                    "header); nothing was proposed", code=P.EXPIRED,
                               proposed=False, late_ms=late)
        t0 = time.perf_counter()
        try:
            res = await commit(self.replica, self.replica.propose, M.encode_command(op, **fields),
                               self.commit_timeout, meanwhile)
        except ApiError:
            self.stats["unavailable"] += 1
            self.metrics.commits.labels(op, "unavailable").inc()
            raise
        self.stats["commits"] += 1
        self.metrics.commits.labels(op, "ok").inc()
        self.metrics.commit_seconds.labels(op).observe(time.perf_counter() - t0)
        if res.get("code") == Code.BAD_COMMAND:
            raise ApiError(400, f"rejected: {res.get('detail')}")
        return res

    # ------------------------------------------------------ who may act
    def _who(self, body: dict) -> tuple[bytes, bytes]:
        """(user id, record key) of a user request, after its tenant token was
        verified and the tenant's and user's rates admitted it: nothing is
        proposed for a request that fails here (see :mod:`vault_raft.fleet.tenants`)."""
        user = user_id(body)
        try:
            self.gate.check_ready()
            if not self.gate.enforced:
                return user, user
            tenant = self.gate.authorize(body.get("auth"), user)
            self.gate.admit(tenant, user)
        except T.Unauthorized as exc:
            self.metrics.rejections.labels("token").inc()
            raise ApiError(401, f"not authorized: {exc}", reason="token") from None
        except T.RateLimited as exc:
            self.metrics.rejections.labels("rate_limited").inc()
            raise ApiError(429, str(exc), retry_after=max(1, math.ceil(exc.retry_after))) \
                from None
        except T.TenantError as exc:
            log.error("tenant list unusable: %s", exc)
            raise ApiError(503, "this node cannot check tenant tokens", proposed=False) from None
        rid = tenant.record_key(user)
        if len(rid) > M.USER_MAX:
            raise ApiError(400, "user id too long for this tenant")
        return user, rid

    # ---------------------------------------------------------- enroll
    async def enroll_start(self, body: dict) -> dict:
        """Evaluate the OPRF under a *fresh* credential identifier (never an
        existing record's key) and issue a single-use ticket that carries the
        identifier to enroll/finish or a change of code.  Nothing is stored."""
        user, rid = self._who(body)
        request = binary(body, "request", opaque.REG_REQUEST_LEN)
        purpose = body.get("purpose", "enroll")
        if purpose not in P.TICKET_PURPOSES:
            raise ApiError(400, f"purpose must be one of {', '.join(P.TICKET_PURPOSES)}")
        nonce, cred_id = os.urandom(M.NONCE_LEN), os.urandom(M.CRED_ID_LEN)
        # The state the ticket is issued from: a later change of the user's
        # record makes it stale.  Its expiry is in the machine's time as well
        # as ours (a clock stepped ahead elsewhere must not expire every ticket).
        seq, clock = self.replica.read_state(lambda v: (v.applied, v.clock))
        expires = max(now_ms(), clock) + TICKET_LIFETIME_MS
        try:
            response = opaque.server_registration_response(self.setup, request, cred_id)
        except OpaqueError as exc:
            raise ApiError(400, f"bad registration request: {exc}") from None
        ticket = self.ks.seal_ticket(P.pack([purpose, rid, nonce, cred_id, seq, expires]))
        return {"response": response, "ticket": ticket, "nonce": nonce, "expires_ms": expires}

    def _open_ticket(self, user: bytes, body: dict, purpose: str) -> dict:
        """The ticket's command fields (nonce, expiry, issue position, credential
        identifier)."""
        blob = binary(body, "ticket", 1, P.TICKET_MAX)
        try:
            t_purpose, t_user, nonce, cred_id, seq, expires = P.unpack(self.ks.open_ticket(blob))
        except (SealError, ValueError, TypeError):
            raise ApiError(401, "enrollment ticket invalid (from another fleet, or altered)") \
                from None
        if t_user != user:
            raise ApiError(401, "enrollment ticket was issued for another user")
        if t_purpose != purpose:
            raise ApiError(401, f"enrollment ticket was issued for {t_purpose}, not {purpose}")
        clock = self.replica.read_state(lambda v: v.clock)
        if max(now_ms(), clock) > expires:
            raise ApiError(401, "enrollment ticket expired; start again")
        return {"nonce": nonce, "ticket_exp": expires, "ticket_seq": seq, "cred_id": cred_id}

    @staticmethod
    def _ticket_refused(code: str) -> None:
        if code == Code.REPLAYED:
            raise ApiError(409, "this enrollment ticket was already used", reason="replayed")
        if code == Code.STALE:
            raise ApiError(409, "the record changed after this enrollment ticket was issued; "
                                "start again", reason="stale")
        if code == Code.EXPIRED:
            raise ApiError(401, "enrollment ticket expired; start again")

    def _open_upload(self, user: bytes, upload: bytes, purpose: bytes, binding: bytes) -> bytes:
        try:
            secret = self.ks.open_upload(upload, P.upload_info(self.ks.fleet_id, user, purpose,
                                                               binding))
        except SealError:
            raise ApiError(400, "secret upload did not decrypt (wrong fleet key, user or "
                                "request?)") from None
        if not 1 <= len(secret) <= P.MAX_SECRET:
            raise ApiError(400, f"secret must be 1..{P.MAX_SECRET} bytes")
        return secret

    async def enroll_finish(self, body: dict) -> tuple[int, dict]:
        user, rid = self._who(body)
        record = binary(body, "record", opaque.RECORD_LEN)
        try:
            opaque.check_registration_record(record)
        except OpaqueError as exc:
            raise ApiError(400, f"bad registration record: {exc}") from None
        max_attempts = body.get("max_attempts", self.cfg.default_max_attempts)
        if not is_integer(max_attempts) or not 1 <= max_attempts <= M.MAX_ATTEMPTS_LIMIT:
            raise ApiError(400, f"max_attempts must be an integer 1..{M.MAX_ATTEMPTS_LIMIT}")
        ticket = self._open_ticket(rid, body, "enroll")
        secret = self._open_upload(user, binary(body, "upload", 1, P.MAX_BODY), b"enroll",
                                   ticket["nonce"])
        version = os.urandom(M.ID_LEN)
        sealed = self.ks.seal_secret(rid, version, secret)
        res = await self.commit(M.ENROLL, deadline_ms=body.get("deadline_ms"), user=rid,
                                now=now_ms(), version=version,
                                opaque_record=record, sealed_secret=sealed,
                                max_attempts=max_attempts, **ticket)
        self._ticket_refused(res["code"])
        if res["code"] == Code.EXISTS:
            raise ApiError(409, "an active record exists for this user")
        return 201, {"enrolled": True, "max_attempts": res["max_attempts"]}

    # --------------------------------------------------------- recover
    async def recover_start(self, body: dict) -> dict:
        user, rid = self._who(body)
        ke1 = binary(body, "ke1", opaque.KE1_LEN)
        try:  # malformed KE1 cannot test a guess: refuse before counting
            group.check_element(ke1[:32], "KE1 blinded element")
            group.check_element(ke1[64:], "KE1 key share")
        except OpaqueError as exc:
            raise ApiError(400, f"bad KE1: {exc}") from None
        attempt_id, now = os.urandom(M.ID_LEN), now_ms()
        # While the attempt is being committed, KE2 is computed from the record
        # as it stands now.  It stays in this process until the commit is done,
        # and is used only if the committed record is the same one.
        spec: dict = {}

        def ke2_in_flight():
            rec = self.replica.read_state(lambda v: v.records.get(rid))
            active = rec is not None and rec.status == M.ACTIVE
            record, cred_id = (rec.opaque_record, rec.cred_id) if active else (None, rid)
            spec["cred"] = (record, cred_id)
            spec["out"] = opaque.server_login_start(self.setup, record, ke1, cred_id,
                                                    context=self.context)
        try:
            res = await self.commit(M.BEGIN_ATTEMPT, deadline_ms=body.get("deadline_ms"),
                                    user=rid, attempt_id=attempt_id, now=now,
                                    meanwhile=ke2_in_flight)
        except ApiError as exc:
            if exc.status == 503:
                self.metrics.guesses.labels("unavailable").inc()
            raise
        # ---- committed: from here on the node may reveal the outcome ----
        code = res["code"]
        self.metrics.guesses.labels(code if code in R.GUESS_OUTCOMES else Code.REFUSED).inc()
        if code == Code.DESTROYED:
            raise ApiError(410, "this record was destroyed after too many wrong codes")
        if code == Code.COUNTED:
            cred = (res["opaque_record"], res["cred_id"])
            version, left = res["version"], res["attempts_left"]
        elif code == Code.UNKNOWN:  # fake KE2: same shape, same work, same commit
            cred, version, left = (None, rid), bytes(M.ID_LEN), self.fake_attempts_left
        else:
            raise ApiError(400, f"attempt refused: {code}")
        if spec.get("cred") == cred:
            state, ke2 = spec["out"]
        else:  # the record changed while the attempt was in flight
            state, ke2 = opaque.server_login_start(self.setup, cred[0], ke1, cred[1],
                                                   context=self.context)
        self.stats["ke2"] += 1
        token = self.ks.seal_token(P.pack([rid, attempt_id, version, now + TOKEN_LIFETIME_MS,
                                           state.to_bytes()]))
        return {"ke2": ke2, "token": token, "attempts_left": left}

    def _open_token(self, user: bytes, token: bytes):
        try:
            t_user, attempt_id, version, exp, state = P.unpack(self.ks.open_token(token))
            login = opaque.ServerLogin.from_bytes(state)
        except (SealError, OpaqueError, ValueError, TypeError):
            raise ApiError(401, "authentication failed") from None
        if t_user != user:
            raise ApiError(401, "authentication failed")
        if now_ms() > exp:
            raise ApiError(401, "attempt expired; start a new recovery")
        return attempt_id, version, login

    async def recover_finish(self, body: dict) -> dict:
        user, rid = self._who(body)
        token = binary(body, "token", 1, 1024)
        ke3 = binary(body, "ke3", opaque.KE3_LEN)
        attempt_id, version, login = self._open_token(rid, token)
        try:
            session_key = opaque.server_login_finish(login, ke3)
        except OpaqueError:
            raise ApiError(401, "authentication failed") from None
        res = await self.commit(M.COMPLETE_ATTEMPT, user=rid, attempt_id=attempt_id,
                                version=version, now=now_ms())
        if res["code"] == Code.DESTROYED:
            raise ApiError(410, "this record was destroyed after too many wrong codes")
        if res["code"] != Code.RELEASED:
            raise ApiError(401, "attempt expired, already used or superseded")
        try:
            secret = self.ks.unseal_secret(rid, res["version"], res["sealed_secret"])
        except SealError:
            log.error("sealed secret of a record failed to open: wrong fleet seal key?")
            raise ApiError(500, "stored secret could not be opened") from None
        box = S.seal(S.session_subkey(session_key, P.RELEASE_KEY), secret,
                     P.release_ad(user, token))
        return {"secret_box": box, "failed_attempts": res["failed_attempts"],
                "max_attempts": res["max_attempts"]}

    # ---------------------------------------------------------- manage
    async def manage(self, body: dict) -> dict:
        user, rid = self._who(body)
        op = body.get("op")
        if op not in P.MANAGE_OPS:
            raise ApiError(400, f"op must be one of {', '.join(P.MANAGE_OPS)}")
        token = binary(body, "token", 1, 1024)
        payload = body.get("payload", b"")
        if not isinstance(payload, bytes) or len(payload) > P.MAX_BODY:
            raise ApiError(400, "payload must be bytes")
        ticket_blob = body.get("ticket", b"") if op == "change_code" else b""
        if not isinstance(ticket_blob, bytes):
            raise ApiError(400, "ticket must be bytes")
        proof = binary(body, "proof", 32)
        attempt_id, version, login = self._open_token(rid, token)
        session_key = login.session_key  # attempt completed: checked by the machine
        if not S.mac_ok(S.session_subkey(session_key, P.MANAGE_KEY),
                        P.manage_message(op, user, token, payload, ticket_blob), proof):
            raise ApiError(401, "authentication failed")
        fields: dict[str, Any] = {"user": rid, "attempt_id": attempt_id, "now": now_ms()}
        if op == "change_secret":
            new_version = os.urandom(M.ID_LEN)
            secret = self._open_upload(user, payload, b"change_secret", token)
            fields.update(version=new_version,
                          sealed_secret=self.ks.seal_secret(rid, new_version, secret))
        elif op == "change_code":
            try:
                fields["opaque_record"] = opaque.check_registration_record(payload)
            except OpaqueError as exc:
                raise ApiError(400, f"bad registration record: {exc}") from None
            fields.update(self._open_ticket(rid, body, "change_code"))
        res = await self.commit(op, deadline_ms=body.get("deadline_ms"), **fields)
        self._ticket_refused(res["code"])
        if res["code"] == Code.DESTROYED:
            raise ApiError(410, "this record was destroyed")
        if not res["ok"]:
            raise ApiError(401, "no fresh successful recovery authorises this change")
        return {"done": res["code"]}

    # ------------------------------------------------- status and admin
    def status(self, detail: bool = False) -> dict:
        """Health for anyone; with ``detail`` (admin only) record counts,
        journal and request statistics as well (:mod:`.admin_requests`)."""
        return admin_requests.status(self, detail)

    async def admin(self, body: dict) -> dict:
        """A signed admin request (:mod:`.admin_requests`)."""
        return await admin_requests.admin(self, body)
