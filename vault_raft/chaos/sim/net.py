"""The virtual clock and the seeded in-memory network between the replicas
(and the pysyncobj transport that sends through it)."""

from __future__ import annotations

import copy
import random

from pysyncobj.transport import Transport


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
