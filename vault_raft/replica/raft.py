"""The pysyncobj replica that carries the vault state machine.

What this adapter changes in pysyncobj 0.3.17, and why (each change is narrow, and
the version check below refuses any other pysyncobj):

* **Persist, then send.**  pysyncobj obtains its journal from
  ``pysyncobj.syncobj.createJournal``; for journal paths of type
  :class:`_DurablePath` we return a :class:`DurableJournal` (checksummed,
  fsynced, Raft-conformant truncation).  Every message goes through
  ``Transport.send``: acks, votes and vote requests are preceded by
  ``journal.sync()``; the leader's own appends are synced at the start of
  each tick, before it counts itself toward a commit (Raft thesis 10.2.1),
  so its disk write overlaps replication.  Term and vote are fsynced in
  ``setCurrentTerm``.
* **Group commit.**  Batching is off (a command leaves at once), but while
  the tick thread drains the command queue the per-command append rounds are
  deferred and sent once: N queued commands, one message per follower.
* **Snapshots without pickle.**  pysyncobj's ``serializer``/``deserializer``
  hooks write msgpack with a SHA-256 trailer (``useFork`` off: the snapshot
  is taken on the Raft thread, consistent with the applied index).  On load the
  journal is aligned to the snapshot so a crash between snapshot and
  compaction loses nothing.
* **Authenticated frames.**  pysyncobj's ``password`` asks for our
  :class:`FrameCipher` (AES-256-GCM-SIV, key from HKDF of the cluster secret)
  instead of PBKDF2 + Fernet; the tag is checked before pysyncobj unpickles.
  pysyncobj still pickles messages and each log entry's (method id, args);
  our only argument is a msgpack byte string, and only holders of the cluster
  secret can put bytes into that pickle.  Frames are zlib "stored", not
  compressed (CPU, and no compress-then-encrypt length leak).
* **No side doors.**  Utility messages (add/remove/transfer/set_version/
  status) and ``readonly`` connections on the Raft port are refused.
* Timeouts tuned for a vault: an isolated leader steps down after
  ``leader_fallback`` seconds; peers may be dialled through a mapped address
  (fault-injection proxies).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zlib
from typing import Callable

import msgpack
import pysyncobj.syncobj as _so
import pysyncobj.tcp_connection as _tcp
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic as monotonicTime
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport
from pysyncobj.version import VERSION as _PSO_VERSION

from ..core.machine import VaultState
from ..crypto.seal import FrameCipher
from .journal import DurableJournal, JournalCorrupt, atomic_write, fsync_dir
from .tls import MtlsTransport, TlsConfig

log = logging.getLogger("vault_raft.replica")

SUPPORTED_PYSYNCOBJ = "0.3.17"

if _PSO_VERSION != SUPPORTED_PYSYNCOBJ:  # the hooks below depend on its internals
    raise ImportError(f"vault_raft needs pysyncobj {SUPPORTED_PYSYNCOBJ}, found {_PSO_VERSION}")

SNAPSHOT_MAGIC = b"VRS1"
FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


class _DurablePath(str):
    """A journal path that asks for a :class:`DurableJournal` (or, in the
    deterministic simulation, for the journal ``factory`` returns)."""

    journal: DurableJournal | None = None
    trace: Callable | None = None
    factory: Callable | None = None


class _ClusterSecret(str):
    """A pysyncobj ``password`` that asks for :class:`FrameCipher` instead of Fernet."""


_original_create_journal = _so.createJournal
_original_get_encryptor = _so.getEncryptor


def _get_encryptor(password):
    if isinstance(password, _ClusterSecret):
        return FrameCipher(str(password))
    return _original_get_encryptor(password)


_so.getEncryptor = _get_encryptor


class _StoredZlib:
    """pysyncobj zlib-compresses every frame at level 3 (about 75 us per frame here,
    for a few percent of size on our mostly random payloads) and then encrypts it:
    compress-then-encrypt also leaks plaintext through length.  Frames are still
    zlib streams, written "stored" (level 0); decompression is unchanged."""

    compress = staticmethod(lambda data, level=-1: zlib.compress(data, 0))
    decompress = staticmethod(zlib.decompress)
    error = zlib.error


_tcp.zlib = _StoredZlib


def _create_journal(journal_file=None):
    if isinstance(journal_file, _DurablePath):
        make = journal_file.factory or DurableJournal
        journal_file.journal = make(str(journal_file), trace=journal_file.trace)
        return journal_file.journal
    return _original_create_journal(journal_file)


_so.createJournal = _create_journal


class _VaultTransport(TCPTransport):
    """TCP transport that syncs the journal before anything leaves the node
    and closes pysyncobj's unauthenticated-by-role side doors."""

    def send(self, node, message):
        self._syncObj._persist_before_send(node, message)
        return super().send(node, message)

    def _connectIfNecessarySingle(self, node):
        """Dial the peer at a mapped address if one is configured (fault-injection
        proxies); the peer still identifies us by the address we report."""
        dial = getattr(self._syncObj, "_dial_map", None) or {}
        target = dial.get(node.id)
        if target is None:
            return super()._connectIfNecessarySingle(node)
        if node in self._connections and self._connections[node].state != CONNECTION_STATE.DISCONNECTED:
            return True
        if not self._shouldConnect(node):
            return False
        now = monotonicTime()
        if node in self._lastConnectAttempt and \
                now - self._lastConnectAttempt[node] < self._syncObj.conf.connectionRetryTime:
            return False
        self._lastConnectAttempt[node] = now
        host, port = target.rsplit(":", 1)
        return self._connections[node].connect(host, int(port))

    def _onIncomingMessageReceived(self, conn, message):
        key_exchanged = (not self._syncObj.encryptor) or conn.sendRandKey
        if key_exchanged and (message == "readonly" or isinstance(message, list)):
            log.warning("refused a readonly/utility request on the Raft port")
            conn.disconnect()
            self._unknownConnections.discard(conn)
            return
        return super()._onIncomingMessageReceived(conn, message)


def _snapshot_bytes(state_blob: bytes, entries: list, cluster: list) -> bytes:
    body = msgpack.packb({"v": 1, "state": state_blob, "entries": entries,
                          "cluster": cluster}, use_bin_type=True)
    return SNAPSHOT_MAGIC + body + hashlib.sha256(body).digest()


def read_snapshot(path: str) -> dict:
    """Read and verify a snapshot file's envelope; raises JournalCorrupt if damaged."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] != SNAPSHOT_MAGIC or len(raw) < 36:
        raise JournalCorrupt(f"{path}: not a vault-raft snapshot")
    body, digest = raw[4:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise JournalCorrupt(f"{path}: snapshot checksum mismatch")
    snap = msgpack.unpackb(body, raw=False)
    if not isinstance(snap, dict) or snap.get("v") != 1 or not isinstance(snap.get("state"), bytes):
        raise JournalCorrupt(f"{path}: unknown snapshot version")
    return snap


class RaftSettings:
    """Raft timing; defaults measured for a 3-7 node fleet on one host or LAN."""

    def __init__(self, *, election_min=0.4, election_max=1.0, heartbeat=0.05,
                 leader_fallback=1.0, connection_timeout=1.5, reconnect=0.3,
                 compaction_min_entries=50_000, compaction_min_time=600.0,
                 batch_bytes=65536):
        self.election_min = election_min
        self.election_max = election_max
        self.heartbeat = heartbeat
        self.leader_fallback = leader_fallback
        self.connection_timeout = connection_timeout
        self.reconnect = reconnect
        self.compaction_min_entries = compaction_min_entries
        self.compaction_min_time = compaction_min_time
        self.batch_bytes = int(batch_bytes)


class DurableReplica(SyncObj):
    """A pysyncobj replica with the durable journal, sync-before-send transport
    and msgpack snapshots.  Subclasses provide the state and its (de)serialisation:
    ``_snapshot_state() -> bytes`` and ``_restore_state(bytes)`` (ValueError if bad)."""

    def __init__(self, self_addr: str, partners: list[str], data_dir: str, cluster_secret: str,
                 settings: RaftSettings | None = None, trace: Callable | None = None,
                 auto_tick: bool = True, transport_class=None, dial: dict | None = None,
                 journal_factory: Callable | None = None, tls: TlsConfig | None = None):
        s = settings or RaftSettings()
        os.makedirs(data_dir, exist_ok=True)
        self._trace = trace
        self._dial_map = dict(dial or {})  # peer raft address -> address to dial
        self._state_lock = threading.Lock()
        self.snapshot_path = os.path.join(data_dir, "snapshot.bin")
        self.journal_path = _DurablePath(os.path.join(data_dir, "raft.journal"))
        self.journal_path.trace = trace
        self.journal_path.factory = journal_factory
        if os.path.exists(self.snapshot_path):  # refuse to start on a damaged snapshot
            try:
                self._check_state(read_snapshot(self.snapshot_path)["state"])
            except ValueError as exc:
                raise JournalCorrupt(f"{self.snapshot_path}: {exc}") from None
        self._tls_config = tls
        if tls is not None and transport_class is None:
            transport_class = MtlsTransport
        conf = SyncObjConf(
            # with mTLS the channel is authenticated and encrypted; the frame
            # cipher is for pysyncobj's own TCP transport only
            password=None if tls is not None else _ClusterSecret(cluster_secret),
            autoTick=auto_tick,
            journalFile=self.journal_path,
            fullDumpFile=self.snapshot_path,
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            useFork=False,
            appendEntriesUseBatch=False,
            appendEntriesPeriod=s.heartbeat,
            raftMinTimeout=s.election_min,
            raftMaxTimeout=s.election_max,
            leaderFallbackTimeout=s.leader_fallback,
            connectionTimeout=s.connection_timeout,
            connectionRetryTime=s.reconnect,
            commandsWaitLeader=False,
            dynamicMembershipChange=False,
            logCompactionMinEntries=s.compaction_min_entries,
            logCompactionMinTime=s.compaction_min_time,
            appendEntriesBatchSizeBytes=s.batch_bytes,
            dnsFailCacheTime=1.0,
        )
        self._draining = False
        self._send_deferred = False
        super().__init__(self_addr, partners, conf,
                         transportClass=transport_class or _VaultTransport)
        # Group commit.  With batching off, pysyncobj sends an append_entries
        # round after *each* queued command; while the tick thread drains the
        # queue we defer those sends and send once, so N commands travel in one
        # message per follower and cost one follower fsync.  (Name-mangled
        # private method: instance attribute lookup comes first.)
        self._pso_send_append_entries = self._SyncObj__sendAppendEntries
        self._SyncObj__sendAppendEntries = self._send_append_entries

    def _send_append_entries(self):
        if self._draining:
            self._send_deferred = True
            return None
        return self._pso_send_append_entries()

    def _checkCommandsToApply(self):
        self._draining, self._send_deferred = True, False
        try:
            super()._checkCommandsToApply()
        finally:
            self._draining = False
        if self._send_deferred:
            self._send_deferred = False
            self._pso_send_append_entries()

    def _snapshot_state(self) -> bytes:
        raise NotImplementedError

    def _restore_state(self, blob: bytes) -> None:
        raise NotImplementedError

    def _check_state(self, blob: bytes) -> None:
        """Validate a state blob without installing it (ValueError if bad)."""
        raise NotImplementedError

    # ------------------------------------------------ persist-before-send
    # Raft thesis 10.2.1: the leader may write its own log in parallel with
    # replicating it, provided it counts itself toward a commit only once its
    # copy is durable.  pysyncobj computes the commit index only at the start
    # of ``_onTick``, so we sync there; every other message that depends on the
    # log or the vote (acks, votes) is preceded by a sync.
    _UNSYNCED_OK = frozenset({"append_entries", "apply_command", "apply_command_response"})

    def _onTick(self, timeToWait=0.0):
        journal = self.journal_path.journal
        if journal is not None:
            journal.sync()
        return super()._onTick(timeToWait)

    def _persist_before_send(self, node, message) -> None:
        journal = self.journal_path.journal
        kind = message.get("type") if isinstance(message, dict) else None
        if journal is not None and kind not in self._UNSYNCED_OK:
            journal.sync()
        if self._trace:
            t = message.get("type") if isinstance(message, dict) else "handshake"
            self._trace("send", t, getattr(node, "id", str(node)), message
                        if t in ("next_node_idx", "response_vote") else None)

    # ------------------------------------------------------------ snapshots
    def _write_snapshot(self, filename: str, raft_data) -> None:
        last, prev, cluster = raft_data
        with self._state_lock:
            blob = self._snapshot_state()
        data = _snapshot_bytes(blob, [list(last), list(prev)],
                               sorted(getattr(n, "id", str(n)) for n in cluster))
        atomic_write(filename, data)  # pysyncobj renames it over the snapshot next
        if self._trace:
            self._trace("snapshot", last[1])

    def _read_snapshot(self, filename: str):
        try:
            snap = read_snapshot(filename)
            with self._state_lock:
                self._restore_state(snap["state"])
        except (JournalCorrupt, OSError, ValueError) as exc:
            # A snapshot we cannot read (received or local) must not be
            # silently skipped: that would forget committed state.  Crash-stop.
            log.critical("cannot load snapshot %s: %s; stopping", filename, exc)
            os._exit(70)
        fsync_dir(filename)  # a received snapshot was renamed without a sync
        last, prev = (tuple(e) for e in snap["entries"])
        self._align_journal(prev, last)
        return (last, prev, snap["cluster"])

    def _align_journal(self, prev: tuple, last: tuple) -> None:
        """Keep the journal's tail when a snapshot is loaded at start-up.

        pysyncobj writes a snapshot, then compacts the journal on its next
        tick.  A crash in between leaves a snapshot and an uncompacted
        journal; on restart pysyncobj keeps the journal only if its *first*
        two entries are the snapshot's last two, and otherwise clears it --
        losing acknowledged, committed entries after the snapshot (found by
        the simulation).  If the journal holds the snapshot's entries further
        in, compact it to start there, so pysyncobj keeps what follows.
        """
        journal = self.journal_path.journal
        if journal is None or len(journal) < 2:
            return
        first = journal[0][1]
        pos = prev[1] - first
        if 0 < pos < len(journal) - 1 and tuple(journal[pos]) == prev \
                and tuple(journal[pos + 1]) == last:
            journal.deleteEntriesTo(pos)

    # --------------------------------------------------------------- status
    def can_serve(self) -> bool:
        """True if this node currently sees a leader and a quorum of peers.

        A node that cannot reach a majority proposes nothing: it answers
        "unavailable" at once instead of queueing a guess that might be
        counted after the client gave up.
        """
        try:
            return self._getLeader() is not None and self.hasQuorum
        except Exception:
            return False

    def status(self) -> dict:
        for _ in range(5):
            try:
                st = self.getStatus()
                break
            except RuntimeError:  # dict changed size on the Raft thread
                continue
        else:
            return {}
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(st["state"], str(st["state"]))
        leader = st["leader"]
        journal = self.journal_path.journal
        return {
            "role": role,
            "term": st["raft_term"],
            "commit_index": st["commit_idx"],
            "last_applied": st["last_applied"],
            "leader": getattr(leader, "id", None) if leader is not None else None,
            "has_quorum": bool(st["has_quorum"]),
            "log_len": st["log_len"],
            "journal_syncs": journal.syncs if journal else 0,
            "synced_index": journal.synced_index if journal else 0,
        }


class VaultReplica(DurableReplica):
    """One node's Raft replica of the vault state machine."""

    def __init__(self, *args, **kwargs):
        self._vault = VaultState()
        super().__init__(*args, **kwargs)

    @replicated
    def _vault_apply(self, command: bytes):
        with self._state_lock:
            return self._vault.apply(command)

    def propose(self, command: bytes, callback: Callable[[object, int], None]) -> None:
        """Append ``command``; ``callback(result, fail_reason)`` runs on the
        Raft thread once it is applied here (or failed)."""
        self._vault_apply(command, callback=callback)

    def read_state(self, fn: Callable[[VaultState], object]):
        """Run a read-only function on the applied state (status/tests only)."""
        with self._state_lock:
            return fn(self._vault)

    def _snapshot_state(self) -> bytes:
        return self._vault.snapshot()

    def _check_state(self, blob: bytes) -> None:
        # Parsed once at start-up; pysyncobj loads the same file on its first
        # tick, and then gets this parsed state instead of a second parse.
        self._checked = (hashlib.sha256(blob).digest(), VaultState.from_snapshot(blob))

    def _restore_state(self, blob: bytes) -> None:
        checked, self._checked = getattr(self, "_checked", None), None
        if checked is not None and checked[0] == hashlib.sha256(blob).digest():
            self._vault = checked[1]
        else:
            self._vault = VaultState.from_snapshot(blob)

    def status(self) -> dict:
        st = super().status()
        st["records"] = self.read_state(lambda v: v.counts())
        return st
