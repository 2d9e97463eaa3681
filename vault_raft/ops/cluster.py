"""The local cluster supervisor: every node its own OS process.

``LocalCluster`` starts nodes with ``python -m vault_raft node --dir ...``
(or a command the caller gives, e.g. a test-only node variant), writes a pid
file per node, and stops, kills, pauses and resumes them *by PID*.  All
waiting is on conditions with deadlines.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

from vault_raft.api import channel as CH
from vault_raft.api import http as wire
from vault_raft.errors import VaultRaftError
from vault_raft.fleet.config import ADMIN_KEY_FILE, FleetInfo
from vault_raft.fleet.create import port_free
from vault_raft.fleet.keystore import load_signing_key
from vault_raft.node.admin import sign_request


class ClusterError(VaultRaftError):
    pass


def _ephemeral_low() -> int | None:
    """The first port of Linux's ephemeral range (None where unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_base_port(nodes: int, *, host: str = "127.0.0.1", extra: tuple[int, ...] = (),
                   start: int = 7100, stop: int = 60000, step: int = 250,
                   rng: random.Random | None = None) -> int:
    """A base port for ``fleet init`` whose ports are all free on ``host``: Raft
    ``base+1..base+nodes``, API ``base+101..base+100+nodes``, metrics
    ``base+201..base+200+nodes``, and ``base+e`` for each offset in ``extra``
    (e.g. a benchmark's etcd).

    The range stays below the kernel's ephemeral ports: a port found free
    there can be taken by any outgoing connection before the node binds it
    (a node whose Raft port is taken never starts its Raft thread)."""
    low = _ephemeral_low()
    top = max([200 + nodes, *extra])
    if low is not None and low - top > start:
        stop = min(stop, low - top)
    bases = list(range(start, stop, step))
    if rng is not None:
        rng.shuffle(bases)
    for base in bases:
        ports = [base + k + i for k in (0, 100, 200) for i in range(1, nodes + 1)] + \
                [base + e for e in extra]
        if all(port_free(host, p) for p in ports):
            return base
    raise ClusterError(f"no free range of ports for {nodes} nodes on {host}")


def http_status(url: str, timeout: float = 1.0, channel: CH.Channel | None = None) -> dict | None:
    """GET /v1/status of one node (through the fleet's pinned ``channel`` for an
    https URL); None if it does not answer, or is not the fleet's."""
    try:
        status, out = wire.call(url, "GET", "/v1/status", timeout=timeout, channel=channel)
    except (OSError, http.client.HTTPException, wire.WireError):
        return None
    return out if status == 200 else None


def wait_until(cond: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition"):
    """Poll ``cond`` until it returns something truthy; raise on the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def _execd(proc: subprocess.Popen, prefix0: bytes) -> bool:
    """Has ``proc`` exited, or exec'd past the command prefix whose program is ``prefix0``?"""
    if proc.poll() is not None:
        return True
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0]
    except OSError:
        return False
    return bool(argv0) and argv0 != prefix0


class LocalCluster:
    def __init__(self, fleet_dir: str, node_cmd: list[str] | None = None,
                 env: dict | None = None, wrap: Callable[[str], list[str]] | None = None):
        self.dir = os.path.abspath(fleet_dir)
        self.fleet = FleetInfo.load(os.path.join(self.dir, "fleet.json"))
        self.ids = [n.id for n in self.fleet.nodes]
        self.api = {n.id: n.api for n in self.fleet.nodes}
        self.channel = CH.for_fleet(self.fleet)  # TLS pinned to the fleet CA (fleet.json)
        self.node_cmd = node_cmd or [sys.executable, "-m", "vault_raft", "node"]
        admin_key = os.path.join(self.dir, ADMIN_KEY_FILE)
        self._admin_sk = load_signing_key(admin_key, "admin key") \
            if os.path.exists(admin_key) else None
        self.env = env
        self.wrap = wrap  # node id -> command prefix (e.g. its network namespace: ops.netns)
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------ pids
    def node_dir(self, nid: str) -> str:
        return os.path.join(self.dir, nid)

    def _pid_file(self, nid: str) -> str:
        return os.path.join(self.node_dir(nid), "node.pid")

    def pid(self, nid: str) -> int | None:
        """PID of the running node process, verified against /proc."""
        try:
            with open(self._pid_file(nid)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        proc = self._procs.get(nid)
        if proc is not None and proc.pid == pid and proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            return None
        if self.node_dir(nid).encode() not in cmdline:
            return None  # a recycled PID: not our node
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return None
        except OSError:
            return None
        return pid

    def running(self) -> list[str]:
        return [n for n in self.ids if self.pid(n)]

    # ---------------------------------------------------------- control
    def start(self, ids: Iterable[str] | None = None) -> list[str]:
        started = []
        for nid in (list(ids) if ids is not None else self.ids):
            if nid not in self.api:
                raise ClusterError(f"no node {nid!r} in this fleet")
            if self.pid(nid):
                continue
            ndir = self.node_dir(nid)
            log = open(os.path.join(ndir, "node.log"), "ab")
            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            if self.env:
                env.update(self.env)
            prefix = self.wrap(nid) if self.wrap is not None else []
            proc = subprocess.Popen(prefix + self.node_cmd + ["--dir", ndir], stdout=log,
                                    stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
            log.close()
            if prefix:  # the prefix execs the node in turn: /proc shows neither mid-exec
                wait_until(functools.partial(_execd, proc, prefix[0].encode()),
                           10, 0.005, f"{nid}'s command prefix to start it")
            self._procs[nid] = proc
            with open(self._pid_file(nid), "w") as f:
                f.write(str(proc.pid))
            started.append(nid)
        return started

    def _reap(self, nid: str, timeout: float) -> bool:
        proc = self._procs.get(nid)
        if proc is not None:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        try:
            wait_until(lambda: not self.pid(nid), timeout, what=f"{nid} to exit")
            return True
        except ClusterError:
            return False

    def signal(self, nid: str, sig: int) -> bool:
        pid = self.pid(nid)
        if not pid:
            return False
        os.kill(pid, sig)
        return True

    def kill(self, nid: str) -> None:
        """kill -9, then reap."""
        if self.signal(nid, signal.SIGKILL):
            self._reap(nid, 10)

    def pause(self, nid: str) -> None:
        self.signal(nid, signal.SIGSTOP)

    def resume(self, nid: str) -> None:
        self.signal(nid, signal.SIGCONT)

    def stop(self, ids: Iterable[str] | None = None, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT, in case it was paused); SIGKILL past the deadline."""
        ids = list(ids) if ids is not None else list(self.ids)
        for nid in ids:
            if self.signal(nid, signal.SIGCONT):
                self.signal(nid, signal.SIGTERM)
        for nid in ids:
            if self.pid(nid) and not self._reap(nid, timeout):
                self.signal(nid, signal.SIGKILL)
                self._reap(nid, 5)
            try:
                os.unlink(self._pid_file(nid))
            except FileNotFoundError:
                pass

    # ----------------------------------------------------------- status
    def status(self, nid: str, timeout: float = 1.0) -> dict | None:
        """A node's status: the detailed one through the signed admin path when
        this fleet directory holds the admin key, else the public one."""
        if self._admin_sk is None:
            return http_status(self.api[nid], timeout, self.channel)
        try:
            code, out = self.admin(nid, "status", timeout=timeout)
        except (OSError, http.client.HTTPException):
            return None
        except wire.WireError:  # a node program without the admin path (the bench's raw
            # counter answers 404 in plain text)
            return http_status(self.api[nid], timeout, self.channel)
        if code == 200:
            return out
        return http_status(self.api[nid], timeout, self.channel)  # (a node that is down says why)

    def admin(self, nid: str, op: str, args: dict | None = None,
              timeout: float = 5.0) -> tuple[int, dict]:
        """A signed admin request to one node (needs FLEET/admin.key)."""
        if self._admin_sk is None:
            raise ClusterError(f"{self.dir}/{ADMIN_KEY_FILE} not found: admin requests need "
                               "the fleet's admin key")
        body = sign_request(self._admin_sk, self.fleet.fleet_id, nid, op, args)
        return wire.call(self.api[nid], "POST", "/v1/admin", body, timeout=timeout,
                         channel=self.channel)

    def transfer(self, to: str | None = None, timeout: float = 10.0) -> str:
        """Hand leadership to ``to`` (or the best follower); returns the new leader."""
        leader = self.leader()
        if leader is None:
            raise ClusterError("no leader to transfer from")
        if to is not None and to not in self.api:
            raise ClusterError(f"no node {to!r} in this fleet")
        if to == leader:
            return leader
        try:
            code, out = self.admin(leader, "transfer", {"to": to} if to else {},
                                   timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ClusterError(f"{leader} did not answer the transfer in time "
                               f"({exc.__class__.__name__}); leadership may still move") from None
        if code != 200:
            raise ClusterError(f"{leader} refused the transfer: {out.get('message')}")
        if not out.get("transferred"):
            raise ClusterError(f"leadership did not move from {leader} in time")
        return out["leader"]

    def leader(self, ids: Iterable[str] | None = None) -> str | None:
        """A node that says it is leader and healthy, as agreed by a healthy follower view."""
        for nid in (list(ids) if ids is not None else self.ids):
            st = self.status(nid, 0.5)
            if st and st.get("role") == "leader" and st.get("healthy"):
                return nid
        return None

    def wait_leader(self, timeout: float = 30.0, ids: Iterable[str] | None = None) -> str:
        return wait_until(lambda: self.leader(ids), timeout, 0.1, "a leader with a majority")

    def wait_healthy(self, ids: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        ids = list(ids) if ids is not None else list(self.ids)

        def ok():
            return all((self.status(n, 0.5) or {}).get("healthy") for n in ids)
        wait_until(ok, timeout, 0.1, f"nodes {', '.join(ids)} to be healthy")

    def table(self) -> str:
        rows = [("node", "pid", "role", "term", "commit", "applied", "leader", "healthy",
                 "note")]
        for nid in self.ids:
            st = self.status(nid) or {}
            note = st.get("reason") or (f"recovering: {st['recovering']}"
                                        if st.get("recovering") else "")
            rows.append((nid, str(self.pid(nid) or "-"), str(st.get("role", "down")),
                         str(st.get("term", "-")), str(st.get("commit_index", "-")),
                         str(st.get("last_applied", "-")), str(st.get("leader") or "-"),
                         "yes" if st.get("healthy") else "no",
                         note if len(note) <= 90 else note[:87] + "..."))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                         for r in rows)

    def as_json(self) -> str:
        return json.dumps({nid: self.status(nid) for nid in self.ids}, default=repr)
