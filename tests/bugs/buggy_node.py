"""Deliberately broken vault nodes, for proving that the chaos checkers catch bugs.

Started only by tests, as ``python tests/bugs/buggy_node.py --bug NAME --dir NODE_DIR``;
nothing in the vault_raft package can load these variants.

* ``ke2-before-commit``: answers KE2 from the node's local state and proposes
  the counted attempt in the background, without waiting for the commit.
* ``counter-in-memory``: counts attempts in a per-process dictionary instead of
  the replicated state machine.
* ``ack-without-commit``: acknowledges an enrollment of an owner without
  committing it.
* ``stale-secret``: releases the first secret it ever released for a user,
  even after the owner changed it.
* ``registration-login-key``: enroll/start evaluates the OPRF under the key of
  the user's active record (the login key) instead of a fresh one: an
  uncounted OPRF oracle.
* ``trust-damaged-tail``: the journal ignores its durability mark, so a log
  cut short by damage is taken as it is (the node votes, campaigns and
  serves with entries it acknowledged missing).
"""
import argparse
import os
import sys

from vault_raft.api import binding as P
from vault_raft.core import machine as M
from vault_raft.crypto import opaque
from vault_raft.node import validate as V
from vault_raft.node import vault_service as N
from vault_raft.node.main import run_node


def _answer(self, user, ke1, rec, left):
    attempt_id, now = os.urandom(M.ID_LEN), V.now_ms()
    state, ke2 = opaque.server_login_start(self.setup, rec.opaque_record, ke1, user,
                                           context=self.context)
    self.stats["ke2"] += 1
    token = self.ks.seal_token(P.pack([user, attempt_id, rec.version,
                                       now + N.TOKEN_LIFETIME_MS, state.to_bytes()]))
    return attempt_id, now, {"ke2": ke2, "token": token, "attempts_left": left}


def ke2_before_commit(original):
    async def recover_start(self, body):
        user = V.user_id(body)
        ke1 = V.binary(body, "ke1", opaque.KE1_LEN)
        rec = self.replica.read_state(lambda v: v.records.get(user))
        if rec is None or rec.status != M.ACTIVE or rec.attempts_used >= rec.max_attempts:
            return await original(self, body)
        attempt_id, now, out = _answer(self, user, ke1, rec,
                                       rec.max_attempts - rec.attempts_used - 1)
        # BUG: the attempt is proposed, but the answer does not wait for the commit.
        self.replica.propose(M.encode_command(M.BEGIN_ATTEMPT, user=user, attempt_id=attempt_id,
                                              now=now), lambda res, err: None)
        return out
    return recover_start


def counter_in_memory(original):
    counts: dict = {}

    async def recover_start(self, body):
        user = V.user_id(body)
        ke1 = V.binary(body, "ke1", opaque.KE1_LEN)
        rec = self.replica.read_state(lambda v: v.records.get(user))
        if rec is None or rec.status != M.ACTIVE:
            return await original(self, body)
        used = counts.get(user, 0)  # BUG: a per-process counter, not a replicated one
        if used >= rec.max_attempts:
            raise V.ApiError(410, "this record was destroyed after too many wrong codes")
        counts[user] = used + 1
        return _answer(self, user, ke1, rec, rec.max_attempts - used - 1)[2]
    return recover_start


def ack_without_commit(original):
    async def enroll_finish(self, body):
        user = V.user_id(body)
        if user.startswith(b"owner-"):
            return 201, {"enrolled": True, "max_attempts": body.get("max_attempts", 10)}
        return await original(self, body)
    return enroll_finish


def stale_secret(original):
    first: dict = {}

    def unseal(ks_unseal):
        def wrapper(user, version, blob):
            secret = ks_unseal(user, version, blob)
            return first.setdefault(user, secret)  # BUG: caches the first secret forever
        return wrapper

    async def recover_finish(self, body):
        if not getattr(self.ks, "_bugged", False):
            self.ks.unseal_secret = unseal(self.ks.unseal_secret)
            self.ks._bugged = True
        return await original(self, body)
    return recover_finish


def registration_login_key(original):
    async def enroll_start(self, body):
        user = V.user_id(body)
        request = V.binary(body, "request", opaque.REG_REQUEST_LEN)
        rec = self.replica.read_state(lambda v: v.records.get(user))
        if rec is None or rec.status != M.ACTIVE:
            return await original(self, body)
        out = await original(self, body)
        # BUG: the registration response is evaluated under the active record's key.
        out["response"] = opaque.server_registration_response(self.setup, request, rec.cred_id)
        return out
    return enroll_start


BUGS = {"ke2-before-commit": ("recover_start", ke2_before_commit),
        "counter-in-memory": ("recover_start", counter_in_memory),
        "ack-without-commit": ("enroll_finish", ack_without_commit),
        "stale-secret": ("recover_finish", stale_secret),
        "registration-login-key": ("enroll_start", registration_login_key)}

def trust_damaged_tail():
    from vault_raft.storage import journal as J
    J.DurableJournal._check_lost = (  # type: ignore[method-assign]  # BUG
        lambda self, mark, snapshot_last: None)


JOURNAL_BUGS = {"trust-damaged-tail": trust_damaged_tail}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bug", required=True, choices=sorted(BUGS) + sorted(JOURNAL_BUGS))
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    if a.bug in JOURNAL_BUGS:
        JOURNAL_BUGS[a.bug]()
    else:
        method, patch = BUGS[a.bug]
        setattr(N.VaultService, method, patch(getattr(N.VaultService, method)))
    sys.exit(run_node(a.dir))
