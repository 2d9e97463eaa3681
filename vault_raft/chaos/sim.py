"""Deterministic simulation: the real replicas and the real state machine in one process.

* The **real** :class:`VaultReplica` (pysyncobj 0.3.17 with our durable-journal
  and persist-before-send rules) and the **real** state machine, with
  ``autoTick=False``: the simulator calls ``doTick`` itself.
* A **virtual clock**, with per-node drift: pysyncobj reads time through its
  module global ``monotonicTime``, which the simulator replaces while it runs.
  Its election timeouts come from a seeded ``random.Random``.
* A seeded **in-memory network** (:class:`SimNet`) that can drop, delay,
  duplicate, reorder and partition messages (one-way or both ways).  Every
  message is deep-copied, so no node shares objects with another.
* A **journal that loses its unsynced tail** when a node crashes
  (:class:`SimJournal`, same contract as :class:`DurableJournal`): only what
  ``sync()`` made durable, and term/vote (synchronous), survive.
* Invariants checked after every tick: at most one leader per term (election
  safety), no two nodes ever apply different entries at the same index
  (state machine safety), and no node's log lacks a committed entry it has
  acknowledged (what pysyncobj's upstream follower truncation breaks).  Client operations are
  recorded in a :class:`History` that the chaos checkers judge.

Same seed, same run (within one ``PYTHONHASHSEED``; ``vault-raft simulate``
pins it).
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.transport import Transport

from vault_raft.chaos.history import History
from vault_raft.core import machine as M
from vault_raft.core.results import Code
from vault_raft.errors import VaultRaftError
from vault_raft.node.replica import VaultReplica
from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft.settings import RaftSettings
from vault_raft.storage.durability import assess_loss, raft_add_position, restore_term

SIM_SETTINGS = dict(election_min=0.4, election_max=1.0, heartbeat=0.05, leader_fallback=1.0,
                    connection_timeout=1.5, reconnect=0.3, compaction_min_entries=40,
                    compaction_min_time=3.0, batch_bytes=400,  # small: catch-ups span messages
                    fork_snapshots=False)  # one process, deterministic


# ------------------------------------------------------------------ disk

@dataclass
class SimDisk:
    """What survives a crash: the log, the term/vote file, the durability mark."""
    entries: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    mark: dict | None = None


class SimJournal:
    """DurableJournal's contract in memory: appends are volatile until ``sync``;
    Raft-conformant truncation like DurableJournal."""

    RAFT_CONFORMANT_TRUNCATION = True
    #: False: ignore the durability mark, taking a damaged log as it is
    #: (``vault-raft simulate --no-durability-mark`` shows what the mark fixes)
    USE_DURABILITY_MARK = True

    def __init__(self, path: str, trace=None, disk: SimDisk | None = None,
                 snapshot_last=None, truncate_after=None, durability_mark=True):
        self.disk = disk if disk is not None else SimDisk()
        self.trace = trace
        self._entries = list(self.disk.entries)
        self._meta = dict(self.disk.meta)
        self._dirty = False
        self.syncs = 0
        self._synced_idx = self._entries[-1][1] if self._entries else 0
        self.recovery: dict | None = None
        self._recover(snapshot_last)

    def _recover(self, snapshot_last) -> None:
        """DurableJournal's rules on open (the same functions decide)."""
        mark = self.disk.mark if self.USE_DURABILITY_MARK else None
        first = self._entries[0][1:] if self._entries else None
        last = self._entries[-1][1:] if self._entries else None
        loss = assess_loss(first, last, snapshot_last, mark)
        if loss is not None:
            self.recovery = {"need": loss["need"], "need_term": loss["need_term"],
                             "reason": "simulated damage"}
            if loss["gap"]:
                self._entries = []
                self.disk.entries = []
                self._synced_idx = 0
        last_term = max([e[2] for e in self._entries[-1:]]
                        + [snapshot_last[1] if snapshot_last else 0])
        new = restore_term(self._meta if "term" in self._meta else None, mark, last_term)
        if new is not None:
            self._meta.update(new)
            self.disk.meta = dict(self._meta)
        self._store_mark()

    def _store_mark(self) -> None:
        last = self._entries[-1] if self._entries else None
        high = (last[1], last[2]) if last is not None and last[1] == self._synced_idx else (0, 0)
        if self.recovery is not None:
            high = max(high, (self.recovery["need"], self.recovery["need_term"]))
        self.disk.mark = {"high": high[0], "high_term": high[1],
                          "term": self._meta.get("term", 0), "vote": self._meta.get("vote")}

    def add(self, command, idx, term):
        if self.RAFT_CONFORMANT_TRUNCATION:
            action, pos = raft_add_position(self._entries, idx, term)
            if action == "skip":
                return
            if action == "cut":
                del self._entries[pos:]
        self._entries.append((command, idx, term))
        self._dirty = True

    def sync(self):
        if self._dirty:
            self.disk.entries = list(self._entries)
            self._dirty = False
            self.syncs += 1
            self._synced_idx = self._entries[-1][1] if self._entries else 0
            if self.recovery is not None and self._synced_idx >= self.recovery["need"]:
                self.recovery = None
            self._store_mark()

    @property
    def synced_index(self):
        return self._synced_idx

    def clear(self):
        self._entries = []
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom):
        if self.RAFT_CONFORMANT_TRUNCATION:
            return
        del self._entries[entryFrom:]
        self._dirty = True

    def deleteEntriesTo(self, entryTo):  # compaction rewrites the journal durably
        if entryTo >= len(self._entries):
            return  # never compact to an empty log (as DurableJournal)
        self._entries = self._entries[entryTo:]
        self.disk.entries = list(self._entries)
        self._dirty = False

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self):
        return len(self._entries)

    def _destroy(self):
        self.sync()

    def flush(self):
        self.sync()

    def setRaftCommitIndex(self, idx):
        self._meta["commit"] = idx

    def getRaftCommitIndex(self):
        return self._meta.get("commit", 1)

    def setCurrentTerm(self, term, voted):
        self._meta["term"], self._meta["vote"] = term, voted
        self.disk.meta = dict(self._meta)  # synchronous, as in DurableJournal
        self._store_mark()

    def getCurrentTerm(self):
        return self._meta.get("term", 0)

    def getVotedForNodeId(self):
        return self._meta.get("vote")

    def onOneSecondTimer(self):
        self.disk.meta = dict(self.disk.meta, commit=self._meta.get("commit", 1))

    def entry(self, idx: int):
        if not self._entries or idx < self._entries[0][1] or idx > self._entries[-1][1]:
            return None
        return self._entries[idx - self._entries[0][1]]


# ------------------------------------------------------------ clock, net

class SimClock:
    def __init__(self):
        self.now = 1000.0
        self.drift: dict[str, float] = {}
        self.current: str | None = None

    def monotonic(self) -> float:
        # Every read advances time by 1 us (deterministically): pysyncobj has
        # loops that end when wall time has passed, which a frozen clock
        # would turn into infinite loops.
        self.now += 1e-6
        return self.now + (self.drift.get(self.current, 0.0) if self.current else 0.0)


class SimNet:
    """Links between replicas.

    ``mode="tcp"`` (default): what pysyncobj runs on.  Each link is FIFO
    (a message never overtakes an earlier one on the same link); a lost
    message breaks the connection -- everything in flight on it is dropped
    and both ends see a disconnect, then reconnect -- and nothing is
    duplicated.  Reordering happens only *across* links, through random delays.
    ``mode="datagram"``: independent loss, duplication and reordering of every
    message, as Raft's paper allows.  pysyncobj assumes ordered links (its
    snapshot transfer is a chunked stream), so this mode explores beyond what
    its TCP transport can produce.
    """

    def __init__(self, rng: random.Random, clock: SimClock, mode: str = "tcp"):
        self.rng, self.clock = rng, clock
        self.mode = mode
        self.last_at: dict[tuple[str, str], float] = {}
        self.broken: dict[frozenset, float] = {}  # link -> time it reconnects
        self.transports: dict[str, Transport] = {}
        self.queue: list = []
        self.seq = 0
        self.blocked: set[tuple[str, str]] = set()
        self.drop = 0.0
        self.dup = 0.0
        self.delay = (0.0005, 0.003)
        self.connected: set[frozenset] = set()
        self.sent = 0
        # node -> {term: highest index acknowledged whose entry had that term}
        self.acked: dict[str, dict[int, int]] = {}

    def send(self, src: str, dst: str, msg) -> None:
        self.sent += 1
        if (src, dst) in self.blocked:
            return
        if self.rng.random() < self.drop:
            if self.mode == "tcp":  # TCP turns loss into a broken connection
                link = frozenset((src, dst))
                self.broken[link] = self.clock.now + self.rng.uniform(0.05, 0.5)
                self.queue = [m for m in self.queue if frozenset((m[2], m[3])) != link]
            return
        copies = 2 if self.mode == "datagram" and self.rng.random() < self.dup else 1
        for _ in range(copies):
            self.seq += 1
            at = self.clock.now + self.rng.uniform(*self.delay)
            if self.mode == "tcp":  # FIFO per link
                at = max(at, self.last_at.get((src, dst), 0.0))
                self.last_at[(src, dst)] = at
            self.queue.append((at, self.seq, src, dst, copy.deepcopy(msg)))

    def due(self, paused: set[str]) -> list:
        now = self.clock.now
        ready = sorted((m for m in self.queue if m[0] <= now and m[3] not in paused),
                       key=lambda m: (m[0], m[1]))
        if ready:
            taken = {m[1] for m in ready}
            self.queue = [m for m in self.queue if m[1] not in taken]
        return ready

    def link_up(self, a: str, b: str) -> bool:
        if self.broken.get(frozenset((a, b)), 0.0) > self.clock.now:
            return False
        return (a, b) not in self.blocked and (b, a) not in self.blocked


def make_transport(net: SimNet):
    class SimTransport(Transport):
        def __init__(self, syncObj, selfNode, otherNodes):
            super().__init__(syncObj, selfNode, otherNodes)
            self._syncObj = syncObj
            self.id = selfNode.id
            self.nodes = {n.id: n for n in otherNodes}
            net.transports[self.id] = self

        def send(self, node, message):
            self._syncObj._persist_before_send(node, message)
            if isinstance(message, dict) and message.get("type") == "next_node_idx" \
                    and message.get("success"):
                idx = message["next_node_idx"] - 1
                e = self._syncObj.journal_path.journal.entry(idx)
                if e is not None:
                    terms = net.acked.setdefault(self.id, {})
                    terms[e[2]] = max(terms.get(e[2], 0), idx)
            if frozenset((self.id, node.id)) not in net.connected:
                return False
            net.send(self.id, node.id, message)
            return True

        def receive(self, src: str, message) -> None:
            node = self.nodes.get(src)
            if node is not None and frozenset((self.id, src)) in net.connected:
                self._onMessageReceived(node, message)

        def destroy(self):
            if net.transports.get(self.id) is self:
                del net.transports[self.id]

    return SimTransport


# --------------------------------------------------------------- the sim

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


# ------------------------------------------------------------ workload

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
