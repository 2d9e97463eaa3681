"""The simulated cluster: real replicas stepped by the virtual clock over the
simulated network and disks, with the Raft invariants checked after every
tick and the clients' operations recorded in a :class:`History`."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from vault_raft.chaos.history import History
from vault_raft.chaos.sim.disk import SimDisk, SimJournal
from vault_raft.chaos.sim.net import SimClock, SimNet, make_transport
from vault_raft.core import machine as M
from vault_raft.core.results import Code
from vault_raft.errors import VaultRaftError
from vault_raft.node.replica import VaultReplica
from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft.settings import RaftSettings

SIM_SETTINGS = dict(election_min=0.4, election_max=1.0, heartbeat=0.05, leader_fallback=1.0,
                    connection_timeout=1.5, reconnect=0.3, compaction_min_entries=40,
                    compaction_min_time=3.0, batch_bytes=400,  # small: catch-ups span messages
                    fork_snapshots=False)  # one process, deterministic


class SafetyViolation(VaultRaftError, AssertionError):
    pass


def _close_fds(rep) -> None:
    for fd in pso.pipe_fds(rep):
        try:
            os.close(fd)
        except OSError:
            pass


class Sim:
    """A cluster of real replicas driven by a virtual clock and a seeded network."""

    def __init__(self, nodes: int = 3, seed: int = 0, workdir: str | None = None,
                 journal_factory: Callable | None = None, settings: dict | None = None,
                 mode: str = "tcp"):
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.net = SimNet(random.Random(seed + 1), self.clock, mode)
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="vault-sim-")
        self.ids = [f"127.0.0.1:{20001 + i}" for i in range(nodes)]
        self.disks = {i: SimDisk() for i in self.ids}
        self._damaged: set[str] = set()
        self.replicas: dict[str, VaultReplica] = {}
        self.paused: set[str] = set()
        self.paused_at: dict[str, float] = {}
        self.history = History()
        self.history.now = lambda: round(  # type: ignore[method-assign]  # simulated time
            self.clock.now - 1000.0, 6)
        self.leaders: dict[int, str] = {}
        self.applied: dict[int, tuple] = {}
        self.checked: dict[str, int] = {}
        self.violations: list[str] = []  # Raft safety: election, state machine
        self.ack_violations: list[str] = []  # a node lacking an acknowledged committed entry
        self._ack_seen: set[str] = set()
        self.pending: list = []  # (deadline, op, kind)
        self.settings = RaftSettings(**(settings or SIM_SETTINGS))
        self._journal_factory = journal_factory or (lambda disk: (
            lambda path, trace=None, **kw: SimJournal(path, trace, disk, **kw)))
        self._saved = pso.set_clock(self.clock.monotonic, random.Random(seed + 2))
        self._transport = make_transport(self.net)
        for nid in self.ids:
            self.start_node(nid)
        self._refresh_links()

    # ---------------------------------------------------------- lifecycle
    def start_node(self, nid: str) -> None:
        self.clock.current = nid
        rep = VaultReplica(nid, [x for x in self.ids if x != nid],
                           os.path.join(self.dir, nid.replace(":", "_")),
                           settings=self.settings, auto_tick=False,
                           transport_class=self._transport,
                           journal_factory=self._journal_factory(self.disks[nid]))
        self.replicas[nid] = rep
        self.checked[nid] = 0
        self._refresh_links()

    def crash(self, nid: str) -> None:
        """The process dies: everything not synced is lost."""
        rep = self.replicas.pop(nid, None)
        if rep is None:
            return
        self.net.transports.pop(nid, None)
        _close_fds(rep)
        self.resume(nid)
        self._refresh_links()

    def restart(self, nid: str) -> None:
        if nid not in self.replicas:
            self.start_node(nid)

    def damaged(self) -> list[str]:
        """Nodes whose storage was damaged and that have not recovered yet."""
        return [n for n in self.ids if n in self._damaged and (
            n not in self.replicas or getattr(self.replicas[n].journal_path.journal,
                                              "recovery", None) is not None)]

    def damage(self, nid: str, kind: str, rng: random.Random) -> str:
        """A storage fault on a stopped node (crashed first): one file of its
        disk is cut, lost or deleted.  Returns what was done."""
        self.crash(nid)
        disk = self.disks[nid]
        self._damaged.add(nid)
        if kind == "cut" and disk.entries:  # a damaged tail: synced entries gone
            k = rng.randint(1, min(5, len(disk.entries)))
            del disk.entries[-k:]
            return f"cut {k} entries"
        if kind == "meta":
            disk.meta = {}
            return "lost the term/vote file"
        if kind == "mark":
            disk.mark = None
            return "lost the durability mark"
        snap = os.path.join(self.dir, nid.replace(":", "_"), "snapshot.bin")
        if os.path.exists(snap):
            os.unlink(snap)
            return "deleted the snapshot"
        return "nothing to damage"

    def pause(self, nid: str) -> None:
        if nid in self.replicas:
            self.paused.add(nid)
            self.paused_at[nid] = self.clock.now

    def resume(self, nid: str) -> None:
        self.paused.discard(nid)
        self.paused_at.pop(nid, None)

    def _expire_paused_links(self) -> None:
        """Over TCP, peers drop a connection they have not read from for
        ``connection_timeout``: a long pause kills the paused node's links and
        whatever was in flight on them (they reconnect after it resumes)."""
        if self.net.mode != "tcp":
            return
        limit = self.settings.connection_timeout
        for nid, since in list(self.paused_at.items()):
            if self.clock.now - since > limit:
                for other in self.ids:
                    if other != nid:
                        link = frozenset((nid, other))
                        self.net.broken[link] = self.clock.now + 0.3
                        self.net.queue = [m for m in self.net.queue
                                          if frozenset((m[2], m[3])) != link]

    def close(self) -> None:
        for nid in list(self.replicas):
            rep = self.replicas.pop(nid)
            rep.destroy()
            _close_fds(rep)
        pso.set_clock(*self._saved)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ network
    def _refresh_links(self) -> None:
        want = set()
        for i, a in enumerate(self.ids):
            for b in self.ids[i + 1:]:
                if a in self.replicas and b in self.replicas and self.net.link_up(a, b):
                    want.add(frozenset((a, b)))
        for pair in self.net.connected - want:
            for x, y in (tuple(pair), tuple(pair)[::-1]):
                t = self.net.transports.get(x)
                if t is not None:
                    self.clock.current = x
                    t._onNodeDisconnected(t.nodes[y])
        for pair in want - self.net.connected:
            for x, y in (tuple(pair), tuple(pair)[::-1]):
                t = self.net.transports.get(x)
                if t is not None:
                    self.clock.current = x
                    t._onNodeConnected(t.nodes[y])
        self.net.connected = want

    def _expected_links(self) -> int:
        return sum(1 for i, a in enumerate(self.ids) for b in self.ids[i + 1:]
                   if a in self.replicas and b in self.replicas and self.net.link_up(a, b))

    def partition(self, groups: list[list[str]]) -> None:
        where = {n: i for i, g in enumerate(groups) for n in g}
        self.net.blocked = {(a, b) for a in self.ids for b in self.ids
                            if a != b and where.get(a) != where.get(b)}
        self._refresh_links()

    def block_one_way(self, src: str, dst: str) -> None:
        self.net.blocked.add((src, dst))
        self._refresh_links()

    def heal(self) -> None:
        self.net.blocked = set()
        self.net.drop = self.net.dup = 0.0
        self._refresh_links()

    # --------------------------------------------------------------- time
    def step(self, dt: float = 0.01) -> None:
        self.clock.now += dt
        self._expire_paused_links()
        if self.net.broken:
            self.net.broken = {k: v for k, v in self.net.broken.items() if v > self.clock.now}
            self._refresh_links()
        elif len(self.net.connected) != self._expected_links():
            self._refresh_links()
        for _at, _, src, dst, data in self.net.due(self.paused):
            t = self.net.transports.get(dst)
            if t is not None and src in self.replicas:
                self.clock.current = dst
                t.receive(src, data)
                if dst in self.replicas:
                    self._check(dst)  # invariants hold between messages too
        order = [n for n in self.ids if n in self.replicas and n not in self.paused]
        self.rng.shuffle(order)
        for nid in order:
            self.clock.current = nid
            self.replicas[nid].doTick(0.0)
            self._check(nid)
        self.clock.current = None
        for item in [p for p in self.pending if p[0] <= self.clock.now]:
            self.pending.remove(item)
            if item[1].outcome == "pending":
                self.history.finish(item[1], "info")

    def run(self, seconds: float, dt: float = 0.01) -> None:
        for _ in range(max(1, int(seconds / dt))):
            self.step(dt)

    def run_until(self, cond, timeout: float, dt: float = 0.01) -> bool:
        end = self.clock.now + timeout
        while self.clock.now < end:
            if cond():
                return True
            self.step(dt)
        return bool(cond())

    def leader(self) -> str | None:
        for nid, rep in self.replicas.items():
            if nid not in self.paused and rep._isLeader() and rep.can_serve():
                return nid
        return None

    # ---------------------------------------------------------- invariants
    def _check(self, nid: str) -> None:
        rep = self.replicas[nid]
        if rep._isLeader():
            term = rep.raftCurrentTerm
            other = self.leaders.setdefault(term, nid)
            if other != nid:
                self._violate(f"election safety: {other} and {nid} both leaders in term {term}")
        journal: Any = rep.journal_path.journal  # a SimJournal (or a test's subclass)
        last = rep.raftLastApplied
        for idx in range(self.checked.get(nid, 0) + 1, last + 1):
            e = journal.entry(idx)
            if e is None:
                continue  # compacted into a snapshot
            key = (bytes(e[0]), e[2])
            seen = self.applied.setdefault(idx, key)
            if seen != key:
                self._violate(f"state machine safety: entry {idx} applied as term {seen[1]} "
                              f"elsewhere and term {key[1]} on {nid}")
        self.checked[nid] = max(self.checked.get(nid, 0), last)
        # A node never lacks an entry it acknowledged that was then committed
        # unchanged (same index and term; by log matching, so is all before it).
        if getattr(journal, "recovery", None) is not None:
            return  # it knows what it lost: no vote, no service until it has it back
        have = journal[-1][1] if len(journal) else 0
        for term, idx in self.net.acked.get(nid, {}).items():
            committed = self.applied.get(idx)
            if committed is not None and committed[1] == term and have < idx:
                msg = (f"t={self.clock.now - 1000:.2f}s {nid} acknowledged entry {idx} "
                       f"(term {term}, committed) but its log ends at {have}")
                if msg.split(" ", 1)[1] not in self._ack_seen:
                    self._ack_seen.add(msg.split(" ", 1)[1])
                    self.ack_violations.append(msg)

    def _violate(self, msg: str) -> None:
        self.violations.append(f"t={self.clock.now - 1000:.2f}s {msg}")

    # ------------------------------------------------------------- clients
    def propose(self, nid: str, f: str, user: str, fields: dict, process: str,
                on_ok: Callable | None = None, timeout: float = 3.0):
        """A client operation through node ``nid``, recorded in the history."""
        op = self.history.invoke(process, f, user, nid, fields.pop("_value", None))
        rep = self.replicas.get(nid)
        if rep is None or nid in self.paused or not rep.can_serve():
            self.history.finish(op, "fail", {"error": "unavailable"})
            return op
        cmd = M.encode_command({"enroll": M.ENROLL, "begin": M.BEGIN_ATTEMPT,
                                "complete": M.COMPLETE_ATTEMPT}[f], user=user.encode(),
                               now=int((self.clock.now - 1000) * 1000) + 1, **fields)

        def cb(res, err):
            if op.outcome != "pending":
                return
            if err != 0:
                self.history.finish(op, "info")  # may still be applied later
                return
            if f == "complete" and res.get("code") == Code.NO_ATTEMPT:
                self.history.finish(op, "fail", {"error": Code.NO_ATTEMPT})  # changed nothing
                return
            self.history.finish(op, "ok", _value_of(f, res, op.value))
            if on_ok:
                on_ok(res)
        self.clock.current = nid
        rep.propose(cmd, cb)
        self.pending.append((self.clock.now + timeout, op, f))
        return op


def _value_of(f: str, res: dict, value):
    code = res.get("code")
    if f == "enroll":
        return dict(value or {}, error=Code.EXISTS) if code == Code.EXISTS else value
    if f == "begin":
        if code == Code.COUNTED:
            return {"attempts_left": res["attempts_left"]}
        if code == Code.DESTROYED:
            return {"destroyed": True}
        return {"error": code}
    if f == "complete":
        if code == Code.RELEASED:
            return {"failed_attempts": res["failed_attempts"]}
        if code == Code.DESTROYED:
            return {"destroyed": True}
        return {"error": code}
    return value
