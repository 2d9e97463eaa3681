"""A network of Linux network namespaces: one "host" per node, for tests and chaos.

:class:`NetnsNet` makes a bridge in the calling namespace and, for every node,
a network namespace joined to the bridge by a veth pair, with its own IPv4
address in a /24 of ``10.213.0.0/16`` that no interface or route of this
machine uses (``10.213.N.i`` for node i; the bridge holds ``10.213.N.254``, so
the caller reaches every node).  The namespaces have no default route: their
traffic stays among themselves and the caller.  Nodes are started inside
their namespace (:meth:`NetnsNet.wrap`: ``ip netns exec NS ...``, which keeps
the PID), a host is cut off by taking its link down (:meth:`NetnsNet.cut`)
and brought back (:meth:`NetnsNet.restore`).

Every name carries a per-run tag (namespaces ``vault-raft-<pid>-<tag>-nK``,
links ``vr<tag>...``), so parallel runs do not collide.  :meth:`NetnsNet.close`
(the context manager's exit, and an ``atexit`` hook when the process ends
without it) kills the processes still inside the namespaces by PID and removes
every namespace and link it made; runs whose process died without cleaning
up (SIGKILL) are swept by the next run.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's ``ip``:
:func:`unavailable` says why not where they are missing.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import time

from vault_raft.errors import VaultRaftError
from vault_raft.fleet.create import init_fleet

NS_PREFIX = "vault-raft-"
SUBNETS = ipaddress.ip_network("10.213.0.0/16")
LOCK_FILE = "/tmp/vault-raft-netns.lock"  # choosing a subnet and claiming it is one step
_NS_NAME = re.compile(r"^vault-raft-(\d+)-([0-9a-f]{6})-n\d+$")


class NetnsError(VaultRaftError):
    """A namespace or link could not be made (the message has ip's error)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


@functools.cache  # probed once per process
def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    reason: str | None = None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "iproute2's ip is not installed"
    else:
        name = f"{NS_PREFIX}probe-{os.getpid()}"
        try:
            r = _ip("netns", "add", name, check=False)
            if r.returncode != 0:
                reason = f"ip netns add failed: {r.stderr.strip()}"
            else:
                r = _ip("link", "add", f"vrp{os.getpid() % 100000}", "type", "bridge",
                        check=False)
                if r.returncode != 0:
                    reason = f"cannot make a bridge: {r.stderr.strip()}"
                else:
                    _ip("link", "del", f"vrp{os.getpid() % 100000}", check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"ip failed: {exc}"
        finally:
            _ip("netns", "del", name, check=False)
    return reason


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _ns_pids(ns: str) -> list[int]:
    r = _ip("netns", "pids", ns, check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def sweep_stale() -> list[str]:
    """Remove the namespaces and links of runs whose process is gone (killed
    without cleaning up); returns the namespaces removed."""
    r = _ip("netns", "list", check=False)
    gone, tags = [], set()
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_NAME.match(name)
        if m and not _pid_alive(int(m.group(1))):
            for pid in _ns_pids(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", name, check=False)
            gone.append(name)
            tags.add(m.group(2))
    for tag in tags:
        _ip("link", "del", f"vr{tag}br", check=False)
    return gone


def _used_subnets() -> set[int]:
    """The N of each 10.213.N.0/24 that an address or a more specific route of
    this machine overlaps (a wider route, e.g. 10.0.0.0/8, loses to the
    bridge's /24)."""
    used: set[int] = set()
    text = _ip("-o", "-4", "addr", "show", check=False).stdout + \
        _ip("-4", "route", "show", "table", "all", check=False).stdout
    for m in re.finditer(r"\b(10\.213\.\d+\.\d+)(/\d+)?", text):
        net = ipaddress.ip_network(m.group(1) + (m.group(2) or "/32"), strict=False)
        if net.prefixlen > 16:
            used.update(range(net[0].packed[2], net[-1].packed[2] + 1))
    return used


class NetnsNet:
    """One namespace (host) per node on a private bridge.  Use as a context manager."""

    def __init__(self, nodes: list[str], rng: random.Random | None = None):
        if not nodes or len(nodes) > 200:
            raise ValueError("1..200 nodes")
        self.nodes = list(nodes)
        self.tag = (rng or random.Random()).getrandbits(24).to_bytes(3, "big").hex()
        self.bridge = f"vr{self.tag}br"
        self.subnet: int | None = None
        self._made_ns: list[str] = []
        self._made_links: list[str] = []
        self._cut: set[str] = set()
        self._pids: set[int] = set()
        self._closed = False

    # ----------------------------------------------------------- names
    def ns(self, nid: str) -> str:
        return f"{NS_PREFIX}{os.getpid()}-{self.tag}-{nid}"

    def _index(self, nid: str) -> int:
        return self.nodes.index(nid) + 1

    def _host_link(self, nid: str) -> str:
        return f"vr{self.tag}h{self._index(nid)}"

    def _ns_link(self, nid: str) -> str:
        return f"vr{self.tag}p{self._index(nid)}"

    def addr(self, nid: str) -> str:
        """The node's own address (its host)."""
        if self.subnet is None:
            raise NetnsError("the network is not up")
        return f"10.213.{self.subnet}.{self._index(nid)}"

    @property
    def gateway(self) -> str:
        """The caller's address on the bridge."""
        return f"10.213.{self.subnet}.254"

    def wrap(self, nid: str) -> list[str]:
        """The command prefix that runs a program inside ``nid``'s namespace
        (``ip netns exec`` execs it: the PID is the program's)."""
        return ["ip", "netns", "exec", self.ns(nid)]

    # ---------------------------------------------------------- set up
    def __enter__(self) -> NetnsNet:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> None:
        reason = unavailable()
        if reason:
            raise NetnsError(reason)
        sweep_stale()
        atexit.register(self.close)
        try:
            with open(LOCK_FILE, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                free = sorted(set(range(1, 254)) - _used_subnets())
                if not free:
                    raise NetnsError("no free /24 in 10.213.0.0/16")
                self.subnet = random.choice(free)
                _ip("link", "add", self.bridge, "type", "bridge")
                self._made_links.append(self.bridge)
                _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            for nid in self.nodes:
                ns, host_end, ns_end = self.ns(nid), self._host_link(nid), self._ns_link(nid)
                _ip("netns", "add", ns)
                self._made_ns.append(ns)
                _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
                self._made_links.append(host_end)
                _ip("link", "set", ns_end, "netns", ns)
                _ip("link", "set", host_end, "master", self.bridge)
                _ip("link", "set", host_end, "up")
                _ip("-n", ns, "addr", "add", f"{self.addr(nid)}/24", "dev", ns_end)
                _ip("-n", ns, "link", "set", ns_end, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------- faults
    def cut(self, nid: str) -> None:
        """Cut the host off: its link goes down (nothing in or out)."""
        _ip("link", "set", self._host_link(nid), "down")
        self._cut.add(nid)

    def restore(self, nid: str) -> None:
        _ip("link", "set", self._host_link(nid), "up")
        self._cut.discard(nid)

    def restore_all(self) -> None:
        for nid in sorted(self._cut):
            self.restore(nid)

    @property
    def cut_off(self) -> list[str]:
        return sorted(self._cut)

    def track(self, pid: int) -> None:
        """A process to kill (by PID) when the network is taken down."""
        self._pids.add(pid)

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def pids(self, nid: str) -> list[int]:
        """The processes running in ``nid``'s namespace."""
        return _ns_pids(self.ns(nid))

    # ---------------------------------------------------------- clean up
    def close(self) -> None:
        """Kill what still runs inside (by PID), remove every namespace and
        link this network made.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        victims = set(self._pids)
        for ns in self._made_ns:
            victims.update(_ns_pids(ns))
        for pid in victims:
            self.kill(pid)
        deadline = time.monotonic() + 5
        while victims and time.monotonic() < deadline:
            victims = {p for p in victims if _pid_alive(p) and not _zombie(p)}
            if victims:
                time.sleep(0.05)
        for ns in self._made_ns:
            _ip("netns", "del", ns, check=False)
        for link in reversed(self._made_links):
            _ip("link", "del", link, check=False)  # (a veth went with its namespace)
        self._made_ns, self._made_links = [], []
        try:
            atexit.unregister(self.close)
        except Exception:  # noqa: BLE001 -- interpreter shutting down
            pass

    def leftovers(self) -> list[str]:
        """Namespaces or links of this network that still exist (should be none
        after :meth:`close`)."""
        out = []
        names = _ip("netns", "list", check=False).stdout
        out += [n for n in (self.ns(x) for x in self.nodes) if n in names.split()]
        links = _ip("-o", "link", "show", check=False).stdout
        out += sorted(set(re.findall(rf"\b(vr{self.tag}\w+)", links)))
        return out


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def init_netns_fleet(directory: str, net: NetnsNet, base_port: int = 7100, **kw) -> str:
    """``fleet init`` for the nodes of ``net`` (named n1..nK): each node
    advertises and listens on its own namespace's address; the same ports
    on every host.  Returns the path of ``fleet.json``."""
    if net.nodes != [f"n{i}" for i in range(1, len(net.nodes) + 1)]:
        raise ValueError("a fleet's nodes are n1..nK")
    return init_fleet(directory, len(net.nodes), base_port=base_port, check_ports=False,
                      node_hosts={nid: net.addr(nid) for nid in net.nodes}, **kw)
