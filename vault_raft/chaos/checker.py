"""Checkers over a recorded history (they judge the history, not the implementation).

a. ``guess_limit``: per record, the KE2 answers the clients actually received
   never exceed its limit between two successful recoveries, and no two of
   them report the same count (each KE2 is its own counted attempt).
b. ``no_lost_writes``: after the cluster heals, every user read back at the
   end (the owners) whose enrollment was acknowledged still recovers, with the
   value of its last acknowledged write (or of a later write whose outcome was
   unknown).  Victims are not read back; a lost victim record shows up in (c),
   since the model forbids counted attempts on an absent record.
c. ``linearizable``: per record, the attempt counts are linearizable against
   a sequential model of the record (Wing-Gong search with memoisation,
   history partitioned per record, indeterminate operations allowed to take
   effect at any time after their invocation or never).  A time budget turns
   a search that runs out into UNKNOWN.
d. ``released_secret``: every released secret was written for that user by
   an enrollment or change that could be visible to the read: invoked before
   the read completed, and not overwritten by an acknowledged write that
   finished before the read began.

Each checker gives a :class:`Verdict` with a :class:`Status`: PASS, FAIL or
UNKNOWN (the checker could not decide).  Only PASS is a pass: ``Verdict.ok``,
a campaign's ``ok`` and :func:`require_pass` (what tests call on runs that
must be good) all count UNKNOWN as not passing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from vault_raft.chaos.history import History, Op
from vault_raft.core.results import Code

INF = float("inf")


class Status(StrEnum):
    """A checker's verdict; the values are what verdict.json and the CLIs show."""
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"  # undecided (a search budget spent): not a pass


@dataclass
class Verdict:
    name: str
    status: Status
    detail: str = ""
    problems: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def ok(self) -> bool:
        """Passed: an UNKNOWN verdict is not ok."""
        return self.status is Status.PASS


def _pass_or_fail(problems: list) -> Status:
    return Status.FAIL if problems else Status.PASS


def require_pass(verdicts: Iterable[Verdict]) -> None:
    """For a run that must be good: raise AssertionError naming every verdict
    that is not PASS (FAIL or UNKNOWN), with its detail and first problems."""
    bad = [(v.name, str(v.status), v.detail, v.problems[:5]) for v in verdicts if not v.ok]
    if bad:
        raise AssertionError(f"checkers that did not pass: {bad}")


# ------------------------------------------------------------ a. guess limit

def guess_limit(h: History, limits: dict[str, int]) -> Verdict:
    problems = []
    checked = 0
    for user, limit in limits.items():
        ops = sorted((o for o in h.ops if o.user == user and o.outcome == "ok"
                      and o.f in ("begin", "complete", "enroll")), key=_completed)
        epoch: list[int] = []
        for o in ops:
            if o.f == "complete" or (o.f == "enroll" and not (o.value or {}).get("error")):
                epoch = []
                continue
            left = (o.value or {}).get("attempts_left")
            if left is None:
                continue  # "destroyed": no KE2
            checked += 1
            epoch.append(left)
            if len(epoch) > limit:
                problems.append(f"{user}: {len(epoch)} KE2 answers for a limit of {limit}")
            if epoch.count(left) > 1:
                problems.append(f"{user}: two KE2 answers both reported {left} attempts left")
    problems = sorted(set(problems))
    return Verdict("guess_limit", _pass_or_fail(problems),
                   f"{checked} KE2 answers on {len(limits)} records", problems)


# ------------------------------------------------------- b. no lost writes

def _completed(o: Op) -> float:
    """When an acknowledged ("ok") operation completed (always recorded for those)."""
    assert o.complete is not None, f"op {o.id} is {o.outcome} but has no completion time"
    return o.complete


def _is_write(o: Op) -> bool:
    return (o.f in ("enroll", "write") and o.outcome in ("ok", "info")
            and not (o.value or {}).get("error"))


def no_lost_writes(h: History) -> Verdict:
    problems = []
    checked = 0
    writes: dict[str, list[Op]] = defaultdict(list)
    finals: dict[str, list[Op]] = defaultdict(list)
    for o in h.ops:
        if _is_write(o):
            writes[o.user].append(o)
        if o.f == "final":
            finals[o.user].append(o)
    for user, ws in writes.items():
        acked = [w for w in ws if w.outcome == "ok"]
        if not acked or user not in finals:
            continue  # only users the workload reads back at the end (owners)
        checked += 1
        last = max(acked, key=_completed)
        allowed = {last.value.get("secret")} | {w.value.get("secret") for w in ws
                                                 if w.outcome == "info" and w.invoke > last.invoke}
        got = [f for f in finals.get(user, []) if f.outcome == "ok"]
        if not got:
            problems.append(f"{user}: acknowledged enrollment, but the final recovery failed")
            continue
        if got[-1].value.get("secret") not in allowed:
            problems.append(f"{user}: final secret is not the last acknowledged one "
                            f"(or a later unknown write)")
    return Verdict("no_lost_writes", _pass_or_fail(problems),
                   f"{checked} users with acknowledged writes", problems)


# ---------------------------------------------------- d. released secrets

def released_secret(h: History) -> Verdict:
    problems = []
    writes: dict[str, list[Op]] = defaultdict(list)
    for o in h.ops:
        if _is_write(o):
            writes[o.user].append(o)
    n = 0
    for r in h.ops:
        if r.f not in ("complete", "final") or r.outcome != "ok" or "secret" not in (r.value or {}):
            continue
        n += 1
        sec = r.value["secret"]
        cands = [w for w in writes[r.user]
                 if w.value.get("secret") == sec and w.invoke < _completed(r)]
        if not cands:
            problems.append(f"{r.user}: op {r.id} released a secret no write produced")
            continue
        w = cands[0]
        w_end = w.complete if w.complete is not None else INF
        newer = [w2 for w2 in writes[r.user] if w2.outcome == "ok" and w2 is not w
                 and w2.invoke > w_end and _completed(w2) < r.invoke]
        if newer:
            problems.append(f"{r.user}: op {r.id} released a secret overwritten by op "
                            f"{newer[0].id} before the read began")
    return Verdict("released_secret", _pass_or_fail(problems), f"{n} releases", problems)


# ------------------------------------------------ c. linearizability search

ABSENT = ("absent",)
DESTROYED = ("destroyed",)


def step(state: tuple, op: Op) -> list[tuple]:
    """Possible next states of one record after ``op`` (empty: impossible).

    State: ("absent",) | ("destroyed",) | ("active", used, max).
    """
    v = op.value or {}
    indeterminate = op.outcome == "info"
    active = state[0] == "active"
    if op.f == "enroll":
        mx = v.get("max_attempts")
        took = [("active", 0, mx)] if not active else []
        if indeterminate:
            return took + [state]
        if v.get("error") == Code.EXISTS:
            return [state] if active else []
        return took
    if op.f == "begin":
        outs: list[tuple] = []
        left = v.get("attempts_left")
        destroyed = v.get("destroyed")
        if active and state[1] < state[2]:
            nxt = ("active", state[1] + 1, state[2])
            if indeterminate or (left is not None and left == state[2] - state[1] - 1):
                outs.append(nxt)
        if active and state[1] >= state[2] and (indeterminate or destroyed):
            outs.append(DESTROYED)
        if state == DESTROYED and (indeterminate or destroyed):
            outs.append(DESTROYED)
        if indeterminate:
            outs.append(state)
        return outs
    if op.f == "complete":
        outs = []
        failed = v.get("failed_attempts")
        if active and state[1] >= 1 and (indeterminate or failed == state[1] - 1):
            outs.append(("active", 0, state[2]))
        if v.get("destroyed") and state == DESTROYED:
            outs.append(state)
        if indeterminate:
            outs.append(state)
        return outs
    return [state]  # writes of the secret do not touch the counters


def _final_as_complete(ops: list[Op]) -> list[Op]:
    """The final read after healing is a begin (recorded as such) followed by a
    release recorded as ``final``: for the model it is a ``complete``."""
    out = []
    for o in ops:
        if o.f == "final":
            o = Op(o.id, o.process, "complete", o.user, o.invoke, o.complete, o.outcome,
                   o.value, o.node)
        out.append(o)
    return out


def linearizable_record(ops: list[Op], budget_s: float = 5.0,
                        init: tuple = ABSENT) -> tuple[Status, str]:
    """Wing-Gong with memoisation.  Returns (PASS, FAIL or UNKNOWN, detail)."""
    ops = [o for o in ops if o.outcome in ("ok", "info")]
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    if n == 0:
        return Status.PASS, "empty"
    inv = [o.invoke for o in ops]
    ret = [_completed(o) if o.outcome == "ok" else INF for o in ops]
    required = 0
    for i, o in enumerate(ops):
        if o.outcome == "ok":
            required |= 1 << i
    deadline = time.monotonic() + budget_s
    seen: set[tuple[int, tuple]] = set()
    stack = [(0, init)]
    iters = 0
    deepest = 0
    while stack:
        mask, state = stack.pop()
        if mask & required == required:
            return Status.PASS, f"{n} ops"
        if (mask, state) in seen:
            continue
        seen.add((mask, state))
        iters += 1
        if iters % 2048 == 0 and time.monotonic() > deadline:
            return Status.UNKNOWN, f"search budget of {budget_s}s spent ({iters} states)"
        # the earliest return among required ops not yet linearized bounds the candidates
        horizon = min((ret[i] for i in range(n) if not mask >> i & 1 and required >> i & 1),
                      default=INF)
        deepest = max(deepest, bin(mask).count("1"))
        for i in range(n):
            if mask >> i & 1 or inv[i] > horizon:
                continue
            for nxt in step(state, ops[i]):
                stack.append((mask | 1 << i, nxt))
    return Status.FAIL, f"no linearization of {n} ops (deepest prefix {deepest})"


def linearizable(h: History, budget_s: float = 10.0) -> Verdict:
    by_user: dict[str, list[Op]] = defaultdict(list)
    for o in h.ops:
        if o.f in ("enroll", "begin", "complete", "final"):
            by_user[o.user].append(o)
    problems: list[str] = []
    unknown: list[str] = []
    per = budget_s / max(1, len(by_user))
    for user, ops in sorted(by_user.items()):
        status, detail = linearizable_record(_final_as_complete(ops), max(per, 0.5))
        if status is Status.FAIL:
            problems.append(f"{user}: {detail}")
        elif status is Status.UNKNOWN:
            unknown.append(f"{user}: {detail}")
    status = Status.FAIL if problems else (Status.UNKNOWN if unknown else Status.PASS)
    return Verdict("linearizable", status, f"{len(by_user)} records", problems + unknown)


def check_all(h: History, limits: dict[str, int], budget_s: float = 10.0) -> list[Verdict]:
    return [guess_limit(h, limits), no_lost_writes(h), linearizable(h, budget_s),
            released_secret(h)]
