"""etcd baseline: a 3-member cluster on 127.0.0.1 with etcd's default (durable) settings.

Debian's ``etcd-server`` package; installed with apt-get when missing and we
are root (``ensure_etcd``).  Driven through etcd's JSON gRPC gateway
(``/v3/kv/put``, ``/v3/kv/range``, ``/v3/kv/txn``) over keep-alive HTTP, so
the client side costs the same kind of work as the vault's HTTP client.

Workloads:
* ``put``: one durable, replicated write;
* ``cas_increment``: read a counter, then a transaction ``if mod_revision ==
  seen then put(value + 1)`` -- what a guess is (a conditional counter
  update); retried on conflict.  Two round trips, one of them a write.
* ``cas_cached``: the same conditional update in **one** transaction, the
  client already knowing the counter's value and revision (as a vault front
  end on etcd that caches them would): only a conflict costs a read.  The
  like-for-like baseline for a guess, which is one round trip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time

from vault_raft.api.http import Connection
from vault_raft.errors import VaultRaftError

ETCD_PACKAGE = "etcd-server=3.4.23-4+b4"


class EtcdUnavailable(VaultRaftError):
    pass


def ensure_etcd(progress=print) -> str:
    path = shutil.which("etcd")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EtcdUnavailable("etcd is not installed and cannot be installed here "
                              f"(need root and apt-get for {ETCD_PACKAGE})")
    progress(f"installing {ETCD_PACKAGE} with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", ETCD_PACKAGE]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            raise EtcdUnavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
    path = shutil.which("etcd")
    if not path:
        raise EtcdUnavailable("etcd-server installed but no etcd binary on PATH")
    return path


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class EtcdCluster:
    def __init__(self, directory: str, base_port: int, members: int = 3):
        self.dir = directory
        self.members = members
        self.client_ports = [base_port + i for i in range(members)]
        self.peer_ports = [base_port + 50 + i for i in range(members)]
        self.procs: list[subprocess.Popen] = []

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.client_ports]

    def start(self, binary: str, timeout: float = 30.0) -> None:
        initial = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        for i in range(self.members):
            d = os.path.join(self.dir, f"e{i}")
            os.makedirs(d, exist_ok=True)
            log = open(os.path.join(self.dir, f"e{i}.log"), "ab")
            self.procs.append(subprocess.Popen([
                binary, "--name", f"e{i}", "--data-dir", d,
                "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "vault-raft-bench", "--log-level", "warn"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True))
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                c = Connection(self.endpoints[0])
                st, _ = c.post_json("/v3/kv/put", {"key": _b64(b"ping"), "value": _b64(b"1")})
                c.close()
                if st == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                raise EtcdUnavailable(f"etcd cluster did not come up (logs in {self.dir})")
            time.sleep(0.2)

    def roles(self) -> list[str | None]:
        """Each member's role ("leader"/"follower"), from /v3/maintenance/status."""
        out: list[str | None] = []
        for ep in self.endpoints:
            c = Connection(ep)
            try:
                st, body = c.post_json("/v3/maintenance/status", {})
                d = json.loads(body) if st == 200 else {}
                me = d.get("header", {}).get("member_id")
                out.append(None if not me else "leader" if d.get("leader") == me else "follower")
            except (OSError, ValueError):
                out.append(None)
            finally:
                c.close()
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = []


class EtcdOps:
    """One worker's operations against one etcd endpoint (keep-alive)."""

    def __init__(self, endpoint: str, key: bytes):
        self.c = Connection(endpoint)
        self.key = _b64(key + b"/put")
        self.counter = _b64(key + b"/counter")
        self._cached: tuple[int, int] | None = None  # (mod_revision, value) for cas_cached

    def put(self) -> bool:
        st, _ = self.c.post_json("/v3/kv/put", {"key": self.key, "value": _b64(os.urandom(16))})
        return st == 200

    def cas_increment(self) -> bool:
        for _ in range(20):
            st, r = self.c.post_json("/v3/kv/range", {"key": self.counter})
            if st != 200:
                return False
            kvs = json.loads(r).get("kvs", [])
            mod = int(kvs[0].get("mod_revision", 0)) if kvs else 0
            val = int(base64.b64decode(kvs[0]["value"])) if kvs else 0
            st, r = self._increment_if(mod, val)
            if st != 200:
                return False
            if json.loads(r).get("succeeded"):
                return True
        return False

    def _increment_if(self, mod: int, val: int):
        """One transaction: if the counter's revision is still ``mod``, put val + 1."""
        txn = {"compare": [{"key": self.counter, "result": "EQUAL", "target": "MOD",
                            "mod_revision": str(mod)}],
               "success": [{"request_put": {"key": self.counter,
                                            "value": _b64(str(val + 1).encode())}}]}
        return self.c.post_json("/v3/kv/txn", txn)

    def cas_cached(self) -> bool:
        """One transaction per update while the cached revision holds."""
        for _ in range(20):
            if self._cached is None:
                st, r = self.c.post_json("/v3/kv/range", {"key": self.counter})
                if st != 200:
                    return False
                kvs = json.loads(r).get("kvs", [])
                self._cached = (int(kvs[0].get("mod_revision", 0)) if kvs else 0,
                                int(base64.b64decode(kvs[0]["value"])) if kvs else 0)
            mod, val = self._cached
            st, r = self._increment_if(mod, val)
            if st != 200:
                return False
            out = json.loads(r)
            if out.get("succeeded"):  # our put is the key's new revision
                self._cached = (int(out["header"]["revision"]), val + 1)
                return True
            self._cached = None
        return False

    def close(self) -> None:
        self.c.close()
