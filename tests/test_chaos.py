"""Real-process fault injection: the campaign passes on the real node, and the
checkers fail on deliberately broken nodes (tests/bugs/buggy_node.py)."""
import json
import os
import sys

import pytest

from vault_raft.chaos.campaign import CampaignConfig, run_campaign, schedule
from vault_raft.chaos.checker import Status, require_pass

HERE = os.path.dirname(os.path.abspath(__file__))
LONG = os.environ.get("VAULT_RAFT_PROFILE") == "long"


def _verdict(res, name):
    return next(v for v in res.verdicts if v.name == name)


@pytest.mark.cluster
@pytest.mark.parametrize("seed", [11, 12] if not LONG else list(range(11, 21)))
def test_campaign_passes_on_the_real_node(tmp_path, seed):
    res = run_campaign(CampaignConfig(out=str(tmp_path), nodes=3, duration=15 if not LONG else 60,
                                      nemesis=("partition", "kill", "pause", "slow", "lossy",
                                               "clock"),
                                      seed=seed, owners=3, attackers=3, victims=10,
                                      victim_limit=12, quiet=True))
    require_pass(res.verdicts)
    assert res.ok
    assert res.ops["ok"] > 200
    assert sum(res.injected.values()) >= 2
    for f in res.files.values():
        assert os.path.getsize(f) > 0
    verdict = json.load(open(res.files["verdict"]))
    assert verdict["ok"] and verdict["seed"] == seed


def test_clock_nemesis_steps_the_wall_clock_and_not_the_monotonic_one(tmp_path):
    import subprocess
    import time

    from vault_raft.chaos.skewclock import set_offset
    set_offset(str(tmp_path), 150.0)
    code = ("import sys, time; from vault_raft.chaos import skewclock as s; "
            "m0 = time.monotonic(); s._install(sys.argv[1]); "
            "print(time.time(), time.time_ns() / 1e9, time.monotonic() - m0)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "clock-offset")],
                         capture_output=True, text=True, check=True).stdout.split()
    wall, wall_ns, mono = map(float, out)
    assert 140 < wall - time.time() < 160 and 140 < wall_ns - time.time() < 160
    assert mono < 5  # monotonic time is untouched
    set_offset(str(tmp_path), 0.0)


def test_schedule_is_a_function_of_the_seed():
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    kinds = ("partition", "kill", "pause", "slow", "lossy")
    a = schedule(5, 60, kinds, nodes)
    assert a == schedule(5, 60, kinds, nodes)
    assert a != schedule(6, 60, kinds, nodes)
    assert all(f.end <= 59 and f.start >= 3 for f in a)


@pytest.mark.parametrize("bug,nemesis,checker", [
    ("ke2-before-commit", ("partition",), "guess_limit"),
    ("counter-in-memory", (), "guess_limit"),
    ("ack-without-commit", (), "no_lost_writes"),
    ("stale-secret", (), "released_secret"),
])
@pytest.mark.cluster
def test_checkers_catch_a_planted_bug(tmp_path, bug, nemesis, checker):
    res = run_campaign(CampaignConfig(
        out=str(tmp_path), nodes=3, duration=12, nemesis=nemesis, seed=3, owners=2,
        attackers=6, victims=3, victim_limit=4, quiet=True, final_timeout=6,
        node_cmd=[sys.executable, os.path.join(HERE, "bugs", "buggy_node.py"), "--bug", bug]))
    failed = {v.name for v in res.verdicts if v.status is Status.FAIL}
    assert checker in failed, [(v.name, v.status, v.problems[:3]) for v in res.verdicts]
    assert not res.ok
