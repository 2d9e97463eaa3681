"""The chaos checkers on hand-written histories: they accept good ones and reject bad ones."""
import pytest

from vault_raft.chaos.checker import (
    Status,
    Verdict,
    guess_limit,
    linearizable,
    linearizable_record,
    no_lost_writes,
    released_secret,
    require_pass,
)
from vault_raft.chaos.history import History, Op


def H(*ops):
    h = History()
    for i, o in enumerate(ops):
        o.id = i
        h.ops.append(o)
    return h


def op(f, user, t0, t1, outcome="ok", **value):
    return Op(0, "p", f, user, t0, t1 if outcome != "info" else None, outcome, value or None)


def enroll(user, t0, t1, mx=3, secret="s0", outcome="ok", **kw):
    return op("enroll", user, t0, t1, outcome, max_attempts=mx, secret=secret, **kw)


def test_guess_limit_accepts_and_rejects():
    good = H(enroll("v", 0, 1), op("begin", "v", 2, 3, attempts_left=2),
             op("begin", "v", 2.5, 3.5, attempts_left=1), op("begin", "v", 4, 5, attempts_left=0),
             op("begin", "v", 6, 7, destroyed=True), op("begin", "v", 6, None, "info"))
    assert guess_limit(good, {"v": 3}).status == "pass"
    too_many = H(enroll("v", 0, 1), *[op("begin", "v", 2 + i, 2.5 + i, attempts_left=2 - i % 3)
                                     for i in range(4)])
    v = guess_limit(too_many, {"v": 3})
    assert v.status == "fail" and any("4 KE2 answers" in p for p in v.problems)
    dup = H(enroll("v", 0, 1), op("begin", "v", 2, 3, attempts_left=2),
            op("begin", "v", 2, 3, attempts_left=2))
    assert guess_limit(dup, {"v": 3}).status == "fail"
    # a success resets the allowance
    reset = H(enroll("v", 0, 1), *[op("begin", "v", 2 + i, 2.5 + i, attempts_left=2 - i)
                                   for i in range(3)],
              op("complete", "v", 6, 7, failed_attempts=2),
              op("begin", "v", 8, 9, attempts_left=2))
    assert guess_limit(reset, {"v": 3}).status == "pass"


def test_linearizability_of_counts():
    seq = [enroll("u", 0, 1, mx=3), op("begin", "u", 2, 3, attempts_left=2),
           op("begin", "u", 4, 5, attempts_left=1), op("complete", "u", 6, 7, failed_attempts=1),
           op("begin", "u", 8, 9, attempts_left=2)]
    assert linearizable_record(seq)[0] == "pass"
    # concurrent begins may linearize in either order
    conc = [enroll("u", 0, 1), op("begin", "u", 2, 5, attempts_left=1),
            op("begin", "u", 3, 4, attempts_left=2)]
    assert linearizable_record(conc)[0] == "pass"
    # ...but sequential ones may not: the later one cannot see more attempts left
    bad = [enroll("u", 0, 1), op("begin", "u", 2, 3, attempts_left=1),
           op("begin", "u", 4, 5, attempts_left=2)]
    assert linearizable_record(bad)[0] == "fail"
    # an indeterminate begin may or may not have counted
    maybe = [enroll("u", 0, 1), op("begin", "u", 2, None, "info"),
             op("begin", "u", 4, 5, attempts_left=1)]
    assert linearizable_record(maybe)[0] == "pass"
    maybe2 = [enroll("u", 0, 1), op("begin", "u", 2, None, "info"),
              op("begin", "u", 4, 5, attempts_left=2)]
    assert linearizable_record(maybe2)[0] == "pass"
    # lost counter: after a crash the count went back
    lost = [enroll("u", 0, 1, mx=5), op("begin", "u", 2, 3, attempts_left=4),
            op("begin", "u", 4, 5, attempts_left=3), op("begin", "u", 6, 7, attempts_left=4)]
    assert linearizable_record(lost)[0] == "fail"
    # destroyed only after the limit
    early = [enroll("u", 0, 1, mx=3), op("begin", "u", 2, 3, attempts_left=2),
             op("begin", "u", 4, 5, destroyed=True)]
    assert linearizable_record(early)[0] == "fail"
    # a release reports the failed attempts since the last success
    wrong_failed = [enroll("u", 0, 1), op("begin", "u", 2, 3, attempts_left=2),
                    op("begin", "u", 4, 5, attempts_left=1),
                    op("complete", "u", 6, 7, failed_attempts=0)]
    assert linearizable_record(wrong_failed)[0] == "fail"
    h = H(*lost)
    assert linearizable(h).status == "fail"


def test_linearizability_budget_gives_unknown():
    ops = [enroll("u", 0, 1, mx=100)] + [op("begin", "u", 2, None, "info") for _ in range(60)] + \
          [op("begin", "u", 3, 4, attempts_left=99 - 30), op("begin", "u", 5, 6, attempts_left=0)]
    status, _ = linearizable_record(ops, budget_s=0.05)
    assert status in (Status.UNKNOWN, Status.FAIL)


def test_only_pass_passes():
    """An undecided checker is not a pass: require_pass (what tests call on
    runs that must be good) refuses UNKNOWN as it refuses FAIL."""
    passed = Verdict("a", Status.PASS, "fine")
    as_text = Verdict("b", "pass")  # type: ignore[arg-type]  # (as verdict.json has it)
    assert passed.ok and as_text.status is Status.PASS
    require_pass([passed, as_text])
    for status in (Status.UNKNOWN, Status.FAIL):
        v = Verdict("b", status, "search budget spent", ["u: detail"])
        assert not v.ok
        with pytest.raises(AssertionError, match=f"'b', '{status}'"):
            require_pass([passed, v])
    with pytest.raises(ValueError):
        Verdict("c", "maybe")  # type: ignore[arg-type]


def test_no_lost_writes_and_released_secret():
    good = H(enroll("o", 0, 1, mx=10, secret="a"), op("write", "o", 2, 3, secret="b"),
             op("begin", "o", 3.5, 3.8, attempts_left=9),
             op("complete", "o", 4, 5, failed_attempts=0, secret="b"),
             op("write", "o", 6, None, "info", secret="c"),
             op("begin", "o", 9, 9.5, attempts_left=9),
             op("final", "o", 10, 11, secret="c", failed_attempts=0))
    assert no_lost_writes(good).status == "pass"
    assert linearizable(good).status == "pass"
    assert released_secret(good).status == "pass"
    lost = H(enroll("o", 0, 1, mx=10, secret="a"), op("write", "o", 2, 3, secret="b"),
             op("final", "o", 10, 11, secret="a", failed_attempts=0, attempts_left=9))
    assert no_lost_writes(lost).status == "fail"
    gone = H(enroll("o", 0, 1, secret="a"), op("final", "o", 10, 11, "fail",
                                                error="no successful final recovery"))
    assert no_lost_writes(gone).status == "fail"
    stale = H(enroll("o", 0, 1, mx=10, secret="a"), op("write", "o", 2, 3, secret="b"),
              op("complete", "o", 4, 5, failed_attempts=0, secret="a"))
    assert released_secret(stale).status == "fail"
    forged = H(enroll("o", 0, 1, secret="a"), op("complete", "o", 4, 5, failed_attempts=0,
                                                  secret="zzz"))
    assert released_secret(forged).status == "fail"


def test_history_round_trip(tmp_path):
    h = H(enroll("o", 0, 1), op("begin", "o", 2, None, "info"))
    f = h.fault("partition", {"groups": [["n1"], ["n2", "n3"]]})
    h.end_fault(f)
    p = tmp_path / "h.jsonl"
    h.write(str(p))
    again = History.read(str(p))
    assert [(o.f, o.outcome) for o in again.ops] == [("enroll", "ok"), ("begin", "info")]
    assert again.faults[0].f == "partition"
