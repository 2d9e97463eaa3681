"""What runs on the simulated cluster: the clients (victims guessed at, an
owner who recovers), their verdicts, and the seeded random fault schedule
that ``vault-raft simulate --seed K`` replays."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable

from vault_raft.chaos.sim.cluster import SIM_SETTINGS, SafetyViolation, Sim
from vault_raft.core import machine as M
from vault_raft.core.results import Code

SIM_TICKET_TTL_MS = 2000


def _digest(label: bytes, user: str, n: int) -> bytes:
    """Ticket bytes fixed by the user (a schedule replays the same log)."""
    return hashlib.sha256(label + b"\0" + user.encode()).digest()[:n]


class SimWorkload:
    """Victims guessed at by attackers; one owner who recovers with the right code."""

    def __init__(self, sim: Sim, victims: int = 3, limit: int = 4):
        self.sim = sim
        self.victims = [f"victim-{i}" for i in range(victims)]
        self.limits = {v: limit for v in self.victims}
        self.owner = "owner"
        if not sim.run_until(lambda: sim.leader() is not None, 30):
            raise SafetyViolation("no leader elected in 30 virtual seconds")
        for user, mx in [(v, limit) for v in self.victims] + [(self.owner, 50)]:
            def enrolled(user=user, mx=mx):
                lead = sim.leader()
                if lead is None:
                    return False
                op = sim.propose(lead, "enroll", user, {
                    "max_attempts": mx, "version": bytes(16), "opaque_record": bytes(192),
                    "sealed_secret": b"s", "nonce": _digest(b"nonce", user, M.NONCE_LEN),
                    "cred_id": _digest(b"cred", user, M.CRED_ID_LEN), "ticket_seq": 0,
                    # tickets short-lived in virtual time: pruned before the faults
                    "ticket_exp": int((sim.clock.now - 1000) * 1000) + SIM_TICKET_TTL_MS,
                    "_value": {"max_attempts": mx, "secret": "00"}}, "setup")
                sim.run_until(lambda: op.outcome != "pending", 5)
                return op.outcome == "ok"
            if not sim.run_until(enrolled, 30, dt=0.05):
                raise SafetyViolation(f"could not enroll {user} on a healthy cluster")

    def guess(self, nid: str, k: int) -> None:
        self.sim.propose(nid, "begin", self.victims[k % len(self.victims)],
                         {"attempt_id": os.urandom(16)}, f"attacker-{k % 4}")

    def recover(self, nid: str, other: str) -> None:
        aid = os.urandom(16)

        def then_complete(res):
            if res.get("code") == Code.COUNTED:
                self.sim.propose(other, "complete", self.owner,
                                 {"attempt_id": aid, "version": res["version"]}, "owner")
        self.sim.propose(nid, "begin", self.owner, {"attempt_id": aid}, "owner",
                         on_ok=then_complete)

    def settle(self, seconds: float = 8.0) -> None:
        """Heal everything, restart crashed nodes, let the cluster converge."""
        sim = self.sim
        sim.heal()
        for n in list(sim.paused):
            sim.resume(n)
        for n in sim.ids:
            sim.restart(n)
        sim.clock.drift.clear()
        sim.run(seconds, dt=0.02)
        for item in list(sim.pending):
            if item[1].outcome == "pending":
                sim.history.finish(item[1], "info")
        sim.pending.clear()

    def verdicts(self, budget_s: float = 5.0):
        from vault_raft.chaos.checker import Status, Verdict, guess_limit, linearizable
        safety = Verdict("raft_safety", Status.FAIL if self.sim.violations else Status.PASS,
                         f"{len(self.sim.leaders)} terms", list(self.sim.violations))
        acked = Verdict("acked_entries", Status.FAIL if self.sim.ack_violations else Status.PASS,
                        "no node lacks a committed entry it acknowledged",
                        list(self.sim.ack_violations))
        return [safety, guess_limit(self.sim.history, self.limits),
                linearizable(self.sim.history, budget_s), acked]


ACTIONS = ("guess", "guess", "guess", "recover", "run", "run", "partition", "heal", "crash",
           "restart", "pause", "resume", "lossy", "drift", "one_way")
# The storage nemesis adds these (a damaged node, restarted later by the schedule).
STORAGE_ACTIONS = ("damage", "damage", "restart", "run")
STORAGE_FAULTS = ("cut", "cut", "cut", "meta", "mark", "snapshot")


def random_run(seed: int, nodes: int = 3, steps: int = 60, journal_factory=None,
               log: Callable | None = None, mode: str = "tcp", storage: bool = False):
    """A seeded random fault schedule: what ``vault-raft simulate --seed K`` replays.
    ``storage``: also damage stopped nodes' disks (one node at a time: the
    fault model; see docs/design.md)."""
    settings = dict(SIM_SETTINGS, compaction_min_entries=20) if storage else None
    sim = Sim(nodes, seed, journal_factory=journal_factory, mode=mode, settings=settings)
    actions = ACTIONS + STORAGE_ACTIONS if storage else ACTIONS
    try:
        wl = SimWorkload(sim)
        rng = random.Random(seed + 3)
        for _ in range(steps):
            a = rng.choice(actions)
            nid = rng.choice(sim.ids)
            if a == "damage":
                if sim.damaged():  # one damaged node at a time
                    a = "restart"
                else:
                    a = f"damage ({sim.damage(nid, rng.choice(STORAGE_FAULTS), rng)})"
            if log:
                log(f"t={sim.clock.now - 1000:7.2f}s {a} {nid}")
            if a == "guess":
                for _ in range(rng.randint(1, 4)):
                    wl.guess(rng.choice(sim.ids), rng.randrange(99))
            elif a == "recover":
                wl.recover(nid, rng.choice(sim.ids))
            elif a == "run":
                sim.run(rng.uniform(0.05, 1.5))
            elif a == "partition":
                order = sim.ids[:]
                rng.shuffle(order)
                cut = rng.randrange(1, len(order))
                sim.partition([order[:cut], order[cut:]])
            elif a == "heal":
                sim.heal()
            elif a == "crash":
                sim.crash(nid)
            elif a == "restart":
                sim.restart(nid)
            elif a == "pause":
                sim.pause(nid)
            elif a == "resume":
                sim.resume(nid)
            elif a == "lossy":
                sim.net.drop, sim.net.dup = rng.uniform(0, 0.3), rng.uniform(0, 0.2)
            elif a == "drift":
                sim.clock.drift[nid] = rng.uniform(-2.0, 2.0)
            elif a == "one_way":
                sim.block_one_way(nid, rng.choice([x for x in sim.ids if x != nid]))
            sim.step()
        wl.settle()
        return wl.verdicts()
    finally:
        sim.close()
