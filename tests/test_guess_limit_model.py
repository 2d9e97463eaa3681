"""Hypothesis stateful test over the state machine *and* the node service.

An owner enrolls, recovers, changes and deletes records through the real
client code; an attacker calls any endpoint in any order, with its own
inputs, with tokens and tickets it saw, and replays any request it recorded
(the owner's included).  The node service runs in-process over a replica
that applies each command to a :class:`VaultState` at once.

Invariant: the OPRF evaluations under an owner's record key that the
attacker obtains (registration responses and KE2s handed to it) number at
most ``max_attempts`` between two successes of the owner.  Every evaluation
the service performs is seen by wrapping :func:`oprf.blind_evaluate`.

``test_the_model_catches_a_registration_oracle`` runs the same model against
a service whose enroll/start evaluates under the login key, and expects the
invariant to fail, so the test is shown able to fail.
"""
import asyncio
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from vault_raft import client as C
from vault_raft.core import machine as M
from vault_raft.crypto import _opaque_core as core
from vault_raft.crypto import group, opaque, oprf
from vault_raft.crypto.ksf import IDENTITY_KSF
from vault_raft.fleet.config import FleetInfo, NodeConfig, NodeInfo, opaque_context
from vault_raft.fleet.keystore import FileKeystore
from vault_raft.node import vault_service as N
from vault_raft.node.validate import ApiError

USERS = [b"alice", b"bob"]
CODES = [b"code-a", b"code-b"]
ROUTES = {"/v1/enroll/start": "enroll_start", "/v1/enroll/finish": "enroll_finish",
          "/v1/recover/start": "recover_start", "/v1/recover/finish": "recover_finish",
          "/v1/manage": "manage"}


class InstantReplica:
    """Applies a proposed command at once (a one-node fleet that never fails)."""

    def __init__(self):
        self.state = M.VaultState()

    def can_serve(self):
        return True

    def propose(self, command, callback):
        callback(self.state.apply(command), 0)

    def read_state(self, fn):
        return fn(self.state)


class InProcessClient(C.Client):
    """The real client, its requests answered by the in-process service."""

    def __init__(self, fleet, service, loop, log):
        super().__init__(fleet)
        self.service, self.loop, self.log = service, loop, log

    def post(self, path, body, **kw):
        self.log.append((path, dict(body)))
        return call(self.service, self.loop, path, body)


def call(service, loop, path, body):
    try:
        out = loop.run_until_complete(getattr(service, ROUTES[path])(dict(body)))
    except ApiError as exc:
        return exc.status, {"message": exc.message}
    return out if isinstance(out, tuple) else (200, out)


class GuessLimitModel(RuleBasedStateMachine):
    planted = False  # the subclass below plants a registration oracle

    @initialize()
    def setup(self):
        ks = FileKeystore.generate(os.urandom(8).hex())
        self.seed = ks.opaque_setup().oprf_seed
        cfg = NodeConfig("n1", ks.fleet_id, "/nonexistent", "127.0.0.1:1", (), "127.0.0.1", 1,
                         default_max_attempts=3)
        self.replica = InstantReplica()
        self.service = N.VaultService(cfg, ks, self.replica)  # type: ignore[arg-type]  # a double
        if self.planted:
            self.service.enroll_start = (  # type: ignore[method-assign]  # the planted bug
                _registration_under_login_key(self.service))
        self.loop = asyncio.new_event_loop()
        fleet = FleetInfo(ks.fleet_id, opaque_context(ks.fleet_id),
                          ks.opaque_setup().public_key, ks.enroll_public_key(), IDENTITY_KSF, 3,
                          (NodeInfo("n1", "http://unused:1"),))
        self.recorded: list[tuple[str, dict]] = []  # everything on the wire
        self.tokens: list[bytes] = []  # recovery tokens the attacker was handed
        self.owner = InProcessClient(fleet, self.service, self.loop, self.recorded)
        self.codes = {}  # user -> the owner's code
        self.owner_cred = {}  # user -> cred_id of the owner's record
        self.obtained: dict[bytes, int] = {}  # OPRF key -> attacker evaluations since success
        self.evaluations: dict[bytes, bytes] = {}  # evaluated element -> OPRF key
        self._real_evaluate = oprf.blind_evaluate
        evaluations = self.evaluations

        def watched(key, blinded):
            out = self._real_evaluate(key, blinded)
            evaluations[out] = key
            return out
        oprf.blind_evaluate = watched

    def teardown(self):
        if hasattr(self, "loop"):
            oprf.blind_evaluate = self._real_evaluate
            self.loop.close()

    # ----------------------------------------------------------- helpers
    def _record(self, user):
        return self.replica.state.records.get(user)

    def _key(self, cred_id):
        return core._oprf_key(self.seed, cred_id)

    def _attacker_got(self, evaluated: bytes) -> None:
        key = self.evaluations.get(evaluated)
        if key is not None:
            self.obtained[key] = self.obtained.get(key, 0) + 1

    def _owner_success(self, user):
        rec = self._record(user)
        self.obtained[self._key(rec.cred_id)] = 0

    def _attack(self, path, body):
        status, out = call(self.service, self.loop, path, body)
        self.recorded.append((path, dict(body)))
        assert status < 500, (path, status, out)
        if status == 200 and path == "/v1/enroll/start":
            self._attacker_got(out["response"][:32])
        if status == 200 and path == "/v1/recover/start":
            self._attacker_got(out["ke2"][:32])
            self.tokens.append(out["token"])
        return status, out

    # -------------------------------------------------------------- owner
    @rule(user=st.sampled_from(USERS), code=st.sampled_from(CODES), limit=st.integers(1, 3))
    def owner_enrolls(self, user, code, limit):
        try:
            self.owner.enroll(user, code, b"secret of " + user, max_attempts=limit)
        except C.AlreadyEnrolled:
            return
        self.codes[user] = code
        self.owner_cred[user] = self._record(user).cred_id
        self.obtained[self._key(self.owner_cred[user])] = 0

    def _owners(self):
        return [u for u in self.codes if self._record(u) is not None
                and self._record(u).status == M.ACTIVE
                and self._record(u).cred_id == self.owner_cred[u]]

    @rule(pick=st.integers(0, 3), op=st.sampled_from(["recover", "change_code",
                                                      "change_secret", "delete"]),
          new_code=st.sampled_from(CODES))
    def owner_acts(self, pick, op, new_code):
        owners = self._owners()
        if not owners:
            return
        user = owners[pick % len(owners)]
        try:
            if op == "recover":
                self.owner.recover(user, self.codes[user])
            elif op == "change_code":
                self.owner.change_code(user, self.codes[user], new_code)
                self.codes[user] = new_code
            elif op == "change_secret":
                self.owner.change_secret(user, self.codes[user], b"new secret")
            else:
                self.owner.delete(user, self.codes[user])
                del self.codes[user]
                return
        except (C.WrongCode, C.NoRecord):
            return  # the attacker used the attempts up: the record is gone
        self.owner_cred[user] = self._record(user).cred_id
        self._owner_success(user)

    # ----------------------------------------------------------- attacker
    @rule(user=st.sampled_from(USERS), code=st.sampled_from(CODES + [b"guess"]))
    def attacker_registers(self, user, code):
        self._attack("/v1/enroll/start", {"user": user, "request":
                                          oprf.blind(code, group.random_scalar())})

    @rule(user=st.sampled_from(USERS), code=st.sampled_from(CODES + [b"guess"]))
    def attacker_guesses(self, user, code):
        _, ke1 = opaque.ClientLogin.start(code, ksf=IDENTITY_KSF)
        self._attack("/v1/recover/start", {"user": user, "ke1": ke1})

    @precondition(lambda self: bool(getattr(self, "tokens", None)))
    @rule(user=st.sampled_from(USERS), pick=st.integers(0, 100))
    def attacker_finishes(self, user, pick):
        status, _ = self._attack("/v1/recover/finish", {
            "user": user, "token": self.tokens[pick % len(self.tokens)], "ke3": os.urandom(64)})
        assert status == 401

    @rule(user=st.sampled_from(USERS), limit=st.integers(1, 3))
    def attacker_enrolls(self, user, limit):
        reg, request = opaque.ClientRegistration.start(b"attacker's code", ksf=IDENTITY_KSF)
        status, start = self._attack("/v1/enroll/start", {"user": user, "request": request})
        record = reg.finish(start["response"]).record
        upload = self.owner._upload(user, b"attacker secret", b"enroll", start["nonce"])
        self._attack("/v1/enroll/finish", {"user": user, "record": record, "upload": upload,
                                           "ticket": start["ticket"], "max_attempts": limit})

    @precondition(lambda self: bool(getattr(self, "recorded", None)))
    @rule(pick=st.integers(0, 10_000), user=st.sampled_from(USERS + [None]))
    def attacker_replays(self, pick, user):
        """Replay anything seen, as it was or aimed at another user."""
        path, body = self.recorded[pick % len(self.recorded)]
        body = dict(body)
        if user is not None:
            body["user"] = user
        before = {u: (r.status, r.cred_id, r.version) for u, r in
                  self.replica.state.records.items()}
        status, _ = self._attack(path, body)
        if path in ("/v1/enroll/finish", "/v1/manage"):
            assert status >= 400, f"replayed {path} was accepted"
            after = {u: (r.status, r.cred_id, r.version) for u, r in
                     self.replica.state.records.items()}
            assert after == before, "a replayed request changed a record"

    # ---------------------------------------------------------- invariant
    @invariant()
    def attacker_evaluations_within_the_limit(self):
        if not hasattr(self, "replica"):
            return
        for user in self._owners():
            rec = self._record(user)
            got = self.obtained.get(self._key(rec.cred_id), 0)
            assert got <= rec.max_attempts, (
                f"the attacker obtained {got} evaluations under {user!r}'s key, "
                f"limit {rec.max_attempts}")


def _registration_under_login_key(service):
    original = service.enroll_start

    async def enroll_start(body):
        out = await original(body)
        rec = service.replica.read_state(lambda v: v.records.get(body.get("user")))
        if rec is not None and rec.status == M.ACTIVE:
            out["response"] = opaque.server_registration_response(
                service.setup, body["request"], rec.cred_id)
        return out
    return enroll_start


SETTINGS = settings(max_examples=80, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestGuessLimitModel = GuessLimitModel.TestCase
TestGuessLimitModel.settings = SETTINGS


class PlantedOracle(GuessLimitModel):
    planted = True


@pytest.mark.slow
def test_the_model_catches_a_registration_oracle():
    with pytest.raises(AssertionError, match="evaluations under"):
        run_state_machine_as_test(PlantedOracle, settings=settings(
            SETTINGS, max_examples=300, database=None))
