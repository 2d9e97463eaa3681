"""The sans-IO state machine, explored by Hypothesis (stateful) against a model."""
import copy
import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from vault_raft.core import machine as M

USERS = [b"alice", b"bob", b"carol"]


def cmd(op, **kw):
    return M.encode_command(op, **kw)


def ticket(now=0, seq=0, ttl=M.TICKET_TTL_MS):
    """The fields a node adds to enroll and change_code from a ticket issued
    at time ``now`` from a state that had applied ``seq`` commands."""
    return {"nonce": os.urandom(M.NONCE_LEN), "ticket_exp": now + ttl, "ticket_seq": seq,
            "cred_id": os.urandom(M.CRED_ID_LEN)}


class VaultModel(RuleBasedStateMachine):
    """Random op sequences; the guess limit and release rules are invariants."""

    @initialize()
    def setup(self):
        self.sm = M.VaultState()
        self.now = 1000
        self.ke2_since_success = {}  # (user, version) -> counted attempts since enroll/success
        self.limit = {}
        self.open: dict[bytes, list] = {u: [] for u in USERS}  # ids the model believes open
        self.completed: dict[bytes, list] = {u: [] for u in USERS}
        self.released = set()
        self.recorded = []  # every enroll/change_code command applied: replayed later

    def _apply(self, op, **kw):
        self.now += kw.pop("dt", 1)
        raw = cmd(op, now=self.now, **kw)
        if op in (M.ENROLL, M.CHANGE_CODE):
            self.recorded.append(raw)
        return self.sm.apply(raw)

    @rule(user=st.sampled_from(USERS), max_attempts=st.integers(1, 5))
    def enroll(self, user, max_attempts):
        version = os.urandom(16)
        before = self.sm.summary(user)["status"]
        r = self._apply(M.ENROLL, user=user, max_attempts=max_attempts, version=version,
                        opaque_record=b"r" * 192, sealed_secret=b"s" * 30,
                        **ticket(self.now, self.sm.applied))
        if before == M.ACTIVE:
            assert r == {"ok": False, "code": "exists"}
        else:
            assert r["ok"]
            self.ke2_since_success[(user, version)] = 0
            self.limit[(user, version)] = max_attempts
            self.open[user] = []

    @rule(pick=st.integers(0, 1000), dt=st.integers(0, 2 * M.TICKET_TTL_MS))
    def replay(self, pick, dt):
        """A recorded enroll or change_code, replayed at any later time, changes nothing."""
        if not self.recorded:
            return
        self.now += dt
        raw = msgpack.unpackb(self.recorded[pick % len(self.recorded)])
        raw["now"] = self.now
        before = {u: self.sm.summary(u) for u in USERS}
        creds = {u: r.cred_id for u, r in self.sm.records.items()}
        r = self.sm.apply(msgpack.packb(raw, use_bin_type=True))
        assert not r["ok"], r
        assert {u: self.sm.summary(u) for u in USERS} == before
        assert {u: r.cred_id for u, r in self.sm.records.items()} == creds

    @rule(user=st.sampled_from(USERS), dt=st.integers(0, 200_000))
    def begin(self, user, dt):
        aid = os.urandom(16)
        r = self._apply(M.BEGIN_ATTEMPT, user=user, attempt_id=aid, dt=dt)
        if r["code"] == "counted":
            key = (user, r["version"])
            self.ke2_since_success[key] += 1
            assert self.ke2_since_success[key] <= self.limit[key], "more KE2s than the limit"
            assert r["attempts_left"] == self.limit[key] - self.ke2_since_success[key]
            self.open[user].append((aid, r["version"]))
        else:
            assert r["code"] in ("unknown", "destroyed")

    @rule(user=st.sampled_from(USERS), pick=st.integers(0, 10), dt=st.integers(0, 200_000))
    def complete(self, user, pick, dt):
        if not self.open[user]:
            return
        aid, version = self.open[user][pick % len(self.open[user])]
        r = self._apply(M.COMPLETE_ATTEMPT, user=user, attempt_id=aid, version=version, dt=dt)
        if r["ok"]:
            assert (user, aid) not in self.released, "released twice for one attempt"
            self.released.add((user, aid))
            self.ke2_since_success[(user, version)] = 0
            self.open[user] = []
            self.completed[user].append(aid)

    @rule(user=st.sampled_from(USERS), op=st.sampled_from([M.DELETE, M.CHANGE_CODE,
                                                         M.CHANGE_SECRET]),
          use_proof=st.booleans())
    def manage(self, user, op, use_proof):
        aid = self.completed[user][-1] if use_proof and self.completed[user] else os.urandom(16)
        extra: dict = {}
        if op == M.CHANGE_CODE:
            extra.update(opaque_record=b"q" * 192, **ticket(self.now, self.sm.applied))
        if op == M.CHANGE_SECRET:
            extra.update(version=os.urandom(16), sealed_secret=b"t" * 30)
        before = self.sm.summary(user)
        r = self._apply(op, user=user, attempt_id=aid, **extra)
        if r["ok"]:
            assert aid in self.completed[user]
            self.completed[user] = []  # one change per success
            if op == M.CHANGE_SECRET:
                old = [k for k in self.ke2_since_success if k[0] == user]
                for k in old:
                    self.ke2_since_success[(user, extra["version"])] = self.ke2_since_success[k]
                    self.limit[(user, extra["version"])] = self.limit[k]
            if op == M.CHANGE_CODE:
                for k in self.ke2_since_success:
                    if k[0] == user:
                        self.ke2_since_success[k] = 0
                self.open[user] = []
        else:
            assert self.sm.summary(user) == before

    @rule(data=st.binary(max_size=300))
    def garbage(self, data):
        before = self.sm.snapshot()
        r = self.sm.apply(data)
        assert r["ok"] is False and r["code"] == "bad_command"
        self.sm.applied -= 1
        assert self.sm.snapshot() == before

    @rule()
    def snapshot_roundtrip(self):
        again = M.VaultState.from_snapshot(self.sm.snapshot())
        assert again.snapshot() == self.sm.snapshot()
        self.sm = again

    @invariant()
    def destroyed_records_hold_nothing(self):
        if not hasattr(self, "sm"):
            return
        for rec in self.sm.records.values():
            if rec.status == M.DESTROYED:
                assert rec.sealed_secret == b"" and rec.opaque_record == b""
            assert rec.attempts_used <= rec.max_attempts


TestVaultModel = VaultModel.TestCase
TestVaultModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@given(st.dictionaries(st.sampled_from(["v", "op", "user", "now", "attempt_id", "max_attempts",
                                        "version", "opaque_record", "sealed_secret"]),
                       st.one_of(st.integers(-5, 2**63), st.binary(max_size=200),
                                 st.text(max_size=5), st.none(),
                                 st.lists(st.integers(-2**63, 2**63 - 1), max_size=3))))
def test_malformed_commands_never_raise(d):
    sm = M.VaultState()
    r = sm.apply(msgpack.packb(d, use_bin_type=True))
    assert isinstance(r, dict) and "code" in r
    if not r["ok"]:
        assert sm.records == {}  # a refused command changes nothing


def test_transition_table_is_explicit():
    # every (status, op) pair is either in the table or refused without change
    for status in (M.ABSENT, M.ACTIVE, M.DESTROYED):
        for op in M._ALL_OPS:
            handler = M.TRANSITIONS.get((status, op))
            if handler is not None:
                assert hasattr(M.VaultState, handler)


def _in_status(status):
    """A machine whose record for b"u" is in ``status``."""
    sm = M.VaultState()
    if status != M.ABSENT:
        assert sm.apply(cmd(M.ENROLL, user=b"u", now=1, max_attempts=1, version=bytes(16),
                            opaque_record=b"r" * 192, sealed_secret=b"s", **ticket()))["ok"]
    if status == M.DESTROYED:
        for n in range(2):
            sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=2 + n, attempt_id=os.urandom(16)))
    assert sm.summary(b"u")["status"] == status
    return sm


def _well_formed(op, sm):
    """A command of ``op`` for b"u" with every field any handler reads, valid."""
    fields = dict(user=b"u", now=10, attempt_id=os.urandom(16), version=bytes(16),
                  opaque_record=b"R" * 192, sealed_secret=b"S", max_attempts=3)
    if op in M._TICKETED:
        fields.update(ticket(10, sm.applied))
    return cmd(op, **fields)


def test_commands_outside_the_table_are_refused_and_change_no_record():
    """Every (status, op) pair missing from the table is refused with the
    status's refusal code, and leaves the records as they were."""
    codes = {M.ABSENT: "unknown", M.DESTROYED: "destroyed", M.ACTIVE: "refused"}
    refused = []
    for status in (M.ABSENT, M.ACTIVE, M.DESTROYED):
        for op in sorted(M._ALL_OPS):
            if (status, op) in M.TRANSITIONS:
                continue
            sm = _in_status(status)
            records, changes = copy.deepcopy(sm.records), dict(sm.changes)
            r = sm.apply(_well_formed(op, sm))
            assert r == {"ok": False, "code": codes[status]}, (status, op, r)
            assert sm.records == records and sm.changes == changes, (status, op)
            assert sm.summary(b"u")["status"] == status
            refused.append((status, op))
    # absent: nothing to complete, change or delete; destroyed: only a new enrollment
    # (and attempts, refused by a handler) -- seven pairs, none of them an active record's
    assert sorted(refused) == sorted(
        [(M.ABSENT, op) for op in (M.COMPLETE_ATTEMPT, M.CHANGE_SECRET, M.CHANGE_CODE,
                                   M.DELETE)]
        + [(M.DESTROYED, op) for op in (M.CHANGE_SECRET, M.CHANGE_CODE, M.DELETE)])


def test_the_table_s_handlers_accept_a_well_formed_command():
    """The refusals above are the table's doing: each pair in the table, given
    the same well-formed commands, reaches its handler (no "bad_command")."""
    for (status, op) in M.TRANSITIONS:
        sm = _in_status(status)
        r = sm.apply(_well_formed(op, sm))
        assert r.get("code") != "bad_command", (status, op, r)


def test_destroy_on_attempt_after_limit():
    sm = M.VaultState()
    v = os.urandom(16)
    sm.apply(cmd(M.ENROLL, user=b"u", now=1, max_attempts=2, version=v,
                 opaque_record=b"r" * 192, sealed_secret=b"s", **ticket()))
    lefts = [sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=2, attempt_id=os.urandom(16)))
             ["attempts_left"] for _ in range(2)]
    assert lefts == [1, 0]
    r = sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=3, attempt_id=os.urandom(16)))
    assert r["code"] == "destroyed" and r["just_destroyed"]
    assert sm.summary(b"u") == {"status": "destroyed", "attempts_used": 2, "max_attempts": 2,
                                "total_attempts": 2, "has_secret": False}
    # re-enrollment after destruction is allowed, with fresh counters
    r = sm.apply(cmd(M.ENROLL, user=b"u", now=4, max_attempts=3, version=v,
                     opaque_record=b"r" * 192, sealed_secret=b"s", **ticket(4, sm.applied)))
    assert r["ok"]


def test_release_once_and_expiry():
    sm = M.VaultState()
    v = os.urandom(16)
    sm.apply(cmd(M.ENROLL, user=b"u", now=0, max_attempts=5, version=v,
                 opaque_record=b"r" * 192, sealed_secret=b"sealed", **ticket()))
    a1, a2 = os.urandom(16), os.urandom(16)
    sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=10, attempt_id=a1))
    sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=20, attempt_id=a2))
    r = sm.apply(cmd(M.COMPLETE_ATTEMPT, user=b"u", now=30, attempt_id=a2, version=v))
    assert r["ok"] and r["sealed_secret"] == b"sealed" and r["failed_attempts"] == 1
    assert sm.apply(cmd(M.COMPLETE_ATTEMPT, user=b"u", now=31, attempt_id=a2,
                        version=v))["code"] == "no_attempt"
    assert sm.apply(cmd(M.COMPLETE_ATTEMPT, user=b"u", now=32, attempt_id=a1,
                        version=v))["code"] == "no_attempt"  # superseded by the success
    a3 = os.urandom(16)
    sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=100, attempt_id=a3))
    assert sm.apply(cmd(M.COMPLETE_ATTEMPT, user=b"u", now=100 + M.ATTEMPT_TTL_MS + 1,
                        attempt_id=a3, version=v))["code"] == "no_attempt"


def _enroll_cmd(user, now, **t):
    return cmd(M.ENROLL, user=user, now=now, max_attempts=3, version=os.urandom(16),
               opaque_record=b"r" * 192, sealed_secret=b"s", **t)


def test_a_ticket_is_single_use_whatever_the_outcome():
    sm = M.VaultState()
    assert sm.apply(_enroll_cmd(b"u", 1, **ticket(0)))["ok"]
    t = ticket(0, sm.applied)
    # refused as "exists" -- and consumed, so it cannot enroll u once u is gone
    assert sm.apply(_enroll_cmd(b"u", 2, **t))["code"] == "exists"
    sm.records.clear()
    assert sm.apply(_enroll_cmd(b"u", 3, **t))["code"] == "replayed"
    assert sm.records == {}


def test_a_ticket_issued_before_the_record_changed_is_stale():
    """A request held back (never committed) and sent after the record was
    destroyed, deleted or re-keyed does nothing."""
    sm = M.VaultState()
    held = ticket(0, sm.applied)  # the owner's first enrollment, held back by an attacker
    owner = ticket(0, sm.applied)
    assert sm.apply(_enroll_cmd(b"u", 1, **owner))["ok"]  # the owner enrolled again
    for n in range(4):  # the attacker uses the attempts up: destroyed
        sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=2 + n, attempt_id=os.urandom(16)))
    assert sm.records[b"u"].status == M.DESTROYED
    assert sm.apply(_enroll_cmd(b"u", 9, **held))["code"] == "stale"
    assert sm.records[b"u"].status == M.DESTROYED
    # a ticket issued after the destruction is good
    assert sm.apply(_enroll_cmd(b"u", 10, **ticket(0, sm.applied)))["ok"]


def test_version_1_commands_are_refused_once_version_2_ones_were_applied():
    sm = M.VaultState()
    old = {"v": 1, "op": M.ENROLL, "user": b"old", "now": 1, "max_attempts": 3,
           "version": bytes(16), "opaque_record": b"r" * 192, "sealed_secret": b"s"}
    assert sm.apply(msgpack.packb(dict(old, v=True)))["code"] == "bad_command"
    assert sm.apply(msgpack.packb(dict(old, v=1.0)))["code"] == "bad_command"
    assert sm.apply(_enroll_cmd(b"new", 1, **ticket(0)))["ok"]
    assert sm.apply(msgpack.packb(old))["code"] == "bad_command"
    assert b"old" not in sm.records
    assert M.VaultState.from_snapshot(sm.snapshot()).format == M.COMMAND_VERSION


def test_expired_tickets_are_forgotten_and_a_slow_clock_cannot_revive_them():
    sm = M.VaultState()
    recorded = [dict(ticket(10)) for _ in range(50)]
    for i, t in enumerate(recorded):
        assert sm.apply(_enroll_cmd(f"u{i}".encode(), 10, **t))["ok"]
    assert len(sm.tickets) == 50
    sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u0", now=10 + M.TICKET_TTL_MS + 1,
                 attempt_id=os.urandom(16)))
    assert sm.tickets == {} and sm._expiries == []  # bounded: expired nonces are dropped
    sm.records.clear()
    for i, t in enumerate(recorded):  # a proposer whose clock is behind replays them
        assert sm.apply(_enroll_cmd(f"u{i}".encode(), 20, **t))["code"] == "expired"
    assert sm.records == {}
    assert sm.clock == 10 + M.TICKET_TTL_MS + 1  # the machine's clock never went back


def test_change_code_moves_the_record_to_the_tickets_key():
    sm = M.VaultState()
    v = os.urandom(16)
    sm.apply(cmd(M.ENROLL, user=b"u", now=1, max_attempts=3, version=v,
                 opaque_record=b"r" * 192, sealed_secret=b"s", **ticket()))
    first = sm.records[b"u"].cred_id
    aid = os.urandom(16)
    assert sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=2, attempt_id=aid))["cred_id"] == first
    sm.apply(cmd(M.COMPLETE_ATTEMPT, user=b"u", now=3, attempt_id=aid, version=v))
    t = ticket(3, sm.applied)
    assert sm.apply(cmd(M.CHANGE_CODE, user=b"u", now=4, attempt_id=aid,
                        opaque_record=b"q" * 192, **t))["ok"]
    assert sm.records[b"u"].cred_id == t["cred_id"] != first


def test_format_1_commands_and_snapshots_are_applied_as_written():
    """Data written before per-record keys: the credential identifier was the user id."""
    sm = M.VaultState()
    old = msgpack.packb({"v": 1, "op": M.ENROLL, "user": b"old", "now": 1, "max_attempts": 3,
                         "version": bytes(16), "opaque_record": b"r" * 192,
                         "sealed_secret": b"s"}, use_bin_type=True)
    assert sm.apply(old)["ok"]
    assert sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"old", now=2,
                        attempt_id=os.urandom(16)))["cred_id"] == b"old"
    # a format 2 enroll without a ticket is malformed
    assert sm.apply(cmd(M.ENROLL, user=b"new", now=3, max_attempts=3, version=bytes(16),
                        opaque_record=b"r" * 192, sealed_secret=b"s"))["code"] == "bad_command"
    # a format 1 snapshot: 12 fields a record, no clock, no tickets
    rec = sm.records[b"old"].to_wire()[:12]
    snap = msgpack.packb({"v": 1, "applied": 7, "records": [[b"old", rec]]}, use_bin_type=True)
    again = M.VaultState.from_snapshot(snap)
    assert again.records[b"old"].cred_id == b"old" and again.applied == 7
    assert M.VaultState.from_snapshot(again.snapshot()).records[b"old"].cred_id == b"old"
    with pytest.raises(ValueError):
        M.VaultState.from_snapshot(msgpack.packb({"v": 3, "applied": 0, "records": []}))


def test_a_malformed_command_does_not_move_the_clock():
    sm = M.VaultState()
    sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=5, attempt_id=os.urandom(16)))
    before = sm.snapshot()
    assert sm.apply(cmd(M.BEGIN_ATTEMPT, user=b"u", now=10**12, attempt_id=b"short"))[
        "code"] == "bad_command"
    assert sm.apply(cmd(M.ENROLL, user=b"u", now=10**12, **ticket(10**12)))["code"] == "bad_command"
    sm.applied -= 2  # (the count of entries applied, for status, does move)
    assert sm.snapshot() == before and sm.clock == 5
