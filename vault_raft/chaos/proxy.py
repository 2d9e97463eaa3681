"""Per-link TCP proxies between Raft nodes: the network half of the nemesis.

Why proxies: this kernel has no ``netem`` (``tc`` cannot delay or drop), and
a proxy needs no privileges, stays on 127.0.0.1, and gives per-link,
per-direction control.  pysyncobj connects each pair of nodes with *one*
TCP connection, dialled by the node with the larger address; the replica's
transport dials the proxy listed in its node.json ``dial`` map instead of the
peer, and reports its own real address, so peers still know who it is.

Each proxy carries one pair.  For each direction it can:

* **block**: stop forwarding (bytes are held; TCP has no loss).  A blocked
  pair's connections are closed and new ones refused, so both nodes see the
  link down, as in a real partition.  A *one-way* block stalls one direction
  only; pysyncobj then drops the connection after its read timeout, which is
  how one-way faults look to a TCP system;
* **delay** every chunk by a fixed time (slow link);
* **reset** connections at random (lossy link: TCP turns loss into resets).
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field


@dataclass
class Direction:
    blocked: bool = False
    delay: float = 0.0  # seconds per chunk


@dataclass
class Link:
    a: str  # node ids: a dials b (a has the larger Raft address)
    b: str
    listen_port: int
    target: tuple[str, int]
    ab: Direction = field(default_factory=Direction)
    ba: Direction = field(default_factory=Direction)
    reset_rate: float = 0.0  # resets per second while > 0
    conns: set = field(default_factory=set)

    def direction(self, src: str, dst: str) -> Direction:
        if (src, dst) == (self.a, self.b):
            return self.ab
        if (src, dst) == (self.b, self.a):
            return self.ba
        raise KeyError((src, dst))


class ProxyNet:
    """All links of a cluster, served by one asyncio loop in a background thread."""

    def __init__(self, seed: int = 0):
        self.links: dict[frozenset, Link] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list = []
        self._rng = random.Random(seed)
        self._thread.start()

    # --------------------------------------------------------------- setup
    def add_link(self, a: str, b: str, target: tuple[str, int]) -> int:
        """Proxy for node ``a`` dialling node ``b`` at ``target``; returns the port."""
        fut = asyncio.run_coroutine_threadsafe(self._serve(a, b, target), self._loop)
        return fut.result(10)

    async def _serve(self, a: str, b: str, target: tuple[str, int]) -> int:
        link = Link(a, b, 0, target)
        server = await asyncio.start_server(lambda r, w: self._accept(link, r, w), "127.0.0.1", 0)
        link.listen_port = server.sockets[0].getsockname()[1]
        self._servers.append(server)
        self.links[frozenset((a, b))] = link
        return link.listen_port

    async def _accept(self, link: Link, reader, writer) -> None:
        if link.ab.blocked and link.ba.blocked:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*link.target)
        except OSError:
            writer.close()
            return
        pair = (writer, up_w)
        link.conns.add(pair)
        t1 = asyncio.ensure_future(self._pump(reader, up_w, link.ab, link, pair))
        t2 = asyncio.ensure_future(self._pump(up_r, writer, link.ba, link, pair))
        await asyncio.wait([t1, t2], return_when=asyncio.FIRST_COMPLETED)
        self._close(link, pair)
        t1.cancel()
        t2.cancel()

    async def _pump(self, reader, writer, d: Direction, link: Link, pair) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                while d.blocked:
                    if link.ab.blocked and link.ba.blocked:
                        return
                    await asyncio.sleep(0.01)
                if d.delay:
                    await asyncio.sleep(d.delay)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            return

    def _close(self, link: Link, pair) -> None:
        link.conns.discard(pair)
        for w in pair:
            try:
                w.close()
            except Exception:
                pass

    # ------------------------------------------------------------ faults
    def _call(self, fn, *args) -> None:
        done = threading.Event()

        def run():
            try:
                fn(*args)
            finally:
                done.set()
        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _apply_block(self, link: Link, ab: bool, ba: bool) -> None:
        link.ab.blocked, link.ba.blocked = ab, ba
        if ab and ba:
            for pair in list(link.conns):
                self._close(link, pair)

    def block(self, src: str, dst: str) -> None:
        """Stop traffic from ``src`` to ``dst`` (one way)."""
        link = self.links[frozenset((src, dst))]
        d = link.direction(src, dst)
        other = link.direction(dst, src)
        self._call(self._apply_block, link, *((True, other.blocked) if d is link.ab
                                              else (other.blocked, True)))

    def cut(self, x: str, y: str) -> None:
        """Both directions between ``x`` and ``y``."""
        self._call(self._apply_block, self.links[frozenset((x, y))], True, True)

    def partition(self, groups: list[list[str]]) -> None:
        """Nodes talk only within their group."""
        where = {n: i for i, g in enumerate(groups) for n in g}
        for key, link in self.links.items():
            x, y = tuple(key)
            if where.get(x) != where.get(y):
                self._call(self._apply_block, link, True, True)

    def slow(self, delay: float) -> None:
        def run():
            for link in self.links.values():
                link.ab.delay = link.ba.delay = delay
        self._call(run)

    def lossy(self, rate: float) -> None:
        for link in self.links.values():
            link.reset_rate = rate

    def tick_resets(self, dt: float) -> None:
        """Called periodically: reset connections of lossy links at random."""
        def run():
            for link in self.links.values():
                if link.reset_rate and self._rng.random() < link.reset_rate * dt:
                    for pair in list(link.conns):
                        self._close(link, pair)
        self._call(run)

    def heal(self) -> None:
        def run():
            for link in self.links.values():  # in place: running pumps hold these
                for d in (link.ab, link.ba):
                    d.blocked, d.delay = False, 0.0
                link.reset_rate = 0.0
        self._call(run)

    def close(self) -> None:
        def run():
            for s in self._servers:
                s.close()
            for link in self.links.values():
                for pair in list(link.conns):
                    self._close(link, pair)
        self._call(run)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
