"""The durable pysyncobj replica that carries a state machine.

The vault's state machine rides on it in :mod:`vault_raft.node.replica`.  What
this adapter changes in pysyncobj 0.3.17, and why (each change is narrow; the
fence in :mod:`._pysyncobj` refuses any other pysyncobj, and is the only module
that touches its internals):

* **Persist, then send.**  pysyncobj obtains its journal from
  ``pysyncobj.syncobj.createJournal``; for journal paths of type
  :class:`DurablePath` we return a :class:`DurableJournal` (checksummed,
  fsynced, Raft-conformant truncation; :mod:`.journal_path`).  Every message goes through the
  transport's ``send``, which calls :meth:`DurableReplica._persist_before_send`:
  acks, votes and vote requests are preceded by ``journal.sync()``.  The
  leader's own appends are not synced before each message: they are synced
  right after each append round goes out and at the start of each tick,
  before the leader counts itself toward a commit (Raft thesis 10.2.1), so
  its disk write overlaps replication.  Term and vote are fsynced in
  ``setCurrentTerm``.
* **Group commit.**  Batching is off (a command leaves at once), but while
  the tick thread drains the command queue the per-command append rounds are
  deferred and sent once: N queued commands, one message per follower.
* **Snapshots without pickle.**  pysyncobj's ``serializer``/``deserializer``
  hooks write msgpack with a SHA-256 trailer.  ``useFork`` is on (pysyncobj
  turns it off with a custom serializer; we turn it back on): pysyncobj
  forks on the Raft thread at the applied index and the child serialises a
  copy-on-write image, so the Raft thread pauses to fork, not to serialise
  (the child takes no lock).  On load the journal is aligned to the
  snapshot so a crash between snapshot and compaction loses nothing
  (:mod:`.snapshots`).
* **Mutual TLS only.**  Nodes talk through :class:`MtlsTransport` (TLS 1.3,
  peers identified by their fleet certificates, msgpack frames: nothing on
  the wire is unpickled).  pysyncobj's own TCP transport, its readonly
  connections and its utility commands are not used.  (The deterministic
  simulation passes its in-memory transport as ``transport_class``.)
* **Pre-vote** (:mod:`.prevote`): a node asks for votes without raising its
  term first, so a partly cut-off node cannot depose a healthy leader.
* **Lazy commit notices.**  No round that only carries a new commit index
  after each commit, unless a follower may be waiting for a command it
  forwarded (``LAZY_COMMIT_NOTICE``).
* **Staggered compaction.**  The k-th of n nodes compacts at (1 + k/n) times
  the thresholds, so the nodes do not all snapshot at once.  The snapshot
  child runs at the lowest CPU priority, and the journal is segmented:
  compaction deletes old segment files on a helper thread instead of
  rewriting the log on the Raft thread.
* **Membership changes** (:mod:`.membership`, :mod:`.membership_hooks`):
  dynamic membership is on; its entries are parsed with an unpickler that
  resolves no global and accepts only a list of five strings, and each
  applied or reverted entry updates the node ids, certificate pins and
  revocations the mTLS transport checks (kept in snapshots too).
* Timeouts tuned for a vault: an isolated leader steps down after
  ``leader_fallback`` seconds; peers may be dialled through a mapped address
  (fault-injection proxies).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON

from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft import membership as _members
from vault_raft.raft.journal_path import DurablePath
from vault_raft.raft.membership_hooks import MembershipHooks
from vault_raft.raft.prevote import PreVote
from vault_raft.raft.settings import RaftSettings
from vault_raft.raft.snapshots import SnapshotFiles
from vault_raft.raft.transport import MtlsTransport, TlsConfig

log = logging.getLogger("vault_raft.replica")

FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


def _stop_on_storage_failure(exc: OSError, synced_index: int) -> None:
    """What a node does when its disk fails (replaced by the node process,
    which restarts itself): stop at once, acknowledging nothing more."""
    logging.shutdown()
    os._exit(75)


#: Called as ``hook(error, last synced index)`` on the Raft thread when the
#: journal cannot write or sync; must not return.
STORAGE_FAILURE_HOOK: Callable[[OSError, int], None] = _stop_on_storage_failure


class DurableReplica(SnapshotFiles, PreVote, MembershipHooks, SyncObj):
    """A pysyncobj replica with the durable journal, sync-before-send transport
    and msgpack snapshots.  Subclasses provide the state and its (de)serialisation:
    ``_snapshot_state() -> bytes`` and ``_restore_state(bytes)`` (ValueError if bad)."""

    RAFT_CONFORMANT_SNAPSHOT = True  # tests switch it off to show the upstream behaviour
    #: After applying, pysyncobj (batching off) sends every follower a round
    #: that only carries the new commit index: four extra messages per commit,
    #: which on a 2-core host slow the next request down.  Followers need it
    #: promptly only to answer a command they forwarded; otherwise the next
    #: append or heartbeat carries the index.  So the round is sent while
    #: forwarded commands are about (one arrived within FORWARD_WINDOW s), and
    #: not when commands are queued (the round this tick sends for them
    #: carries the index).
    LAZY_COMMIT_NOTICE = True
    FORWARD_WINDOW = 1.0
    SNAPSHOT_NICE = 19  # the forked snapshot writer's niceness

    #: A node whose applied index lags its commit index by more than this many
    #: entries is not healthy (it would answer from a stale state).
    APPLY_LAG_BOUND = 1000

    def __init__(self, self_addr: str, partners: list[str], data_dir: str, *,
                 settings: RaftSettings | None = None, trace: Callable | None = None,
                 auto_tick: bool = True, transport_class=None, dial: dict | None = None,
                 journal_factory: Callable | None = None, tls: TlsConfig | None = None,
                 truncate_after: int | None = None, bind: str | None = None):
        s = settings or RaftSettings()
        os.makedirs(data_dir, exist_ok=True)
        self._trace = trace
        self._dial_map = dict(dial or {})  # peer raft address -> address to dial
        self._state_lock = threading.Lock()
        self._pid = os.getpid()
        self.snapshot_path = os.path.join(data_dir, "snapshot.bin")
        self.journal_path = self._make_journal_path(data_dir, s, trace, journal_factory,
                                                    truncate_after)
        self._tls_config = tls
        self.membership = _members.Membership(
            {addr: nid for nid, addr in tls.peers.items()} if tls is not None else None)
        self._proposing_change = False
        if transport_class is None:
            if tls is None:
                raise TypeError("a replica talks mutual TLS: pass tls (a TlsConfig)")
            transport_class = MtlsTransport
        self._draining = False
        self._send_deferred = False
        self._raft_calls: queue.SimpleQueue = queue.SimpleQueue()
        self._init_votes(s.pre_vote, s.election_min)
        self.rounds_sent = 0  # command-queue drains done by the Raft thread (wait_sent)
        self._sent_cond = threading.Condition()
        # pysyncobj starts its tick thread inside SyncObj.__init__, before the
        # hooks below exist: ticks wait for them (else a first tick could apply
        # the journal's committed membership entries without their revocations)
        self._hooks_installed = threading.Event()
        super().__init__(self_addr, partners,
                         self._sync_obj_conf(s, self_addr, partners, auto_tick, bind),
                         transportClass=transport_class)
        self._install_hooks(s)
        self._install_membership_hooks()
        self._journal_ready()
        self._hooks_installed.set()

    def _make_journal_path(self, data_dir: str, s: RaftSettings, trace, journal_factory,
                           truncate_after: int | None) -> DurablePath:
        path = DurablePath(os.path.join(data_dir, "raft.journal"))
        path.trace = trace
        path.factory = journal_factory
        path.segment_bytes = s.segment_bytes
        path.truncate_after = truncate_after
        path.durability_mark = s.durability_mark
        path.snapshot_last = self._check_snapshot_file()
        return path

    def _sync_obj_conf(self, s: RaftSettings, self_addr: str, partners: list[str],
                       auto_tick: bool, bind: str | None) -> SyncObjConf:
        members = sorted({str(self_addr), *map(str, partners)})
        stagger = 1.0 + members.index(str(self_addr)) / len(members)
        return SyncObjConf(
            password=None,  # the transport authenticates and encrypts
            autoTick=auto_tick,
            journalFile=self.journal_path,
            fullDumpFile=self.snapshot_path,
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            # A snapshot is written by a forked child from a copy-on-write image
            # of the applied state, so the Raft thread pauses for the fork, not
            # for serialising (1M records: seconds).  The simulation turns it off.
            useFork=s.fork_snapshots,
            appendEntriesUseBatch=False,
            appendEntriesPeriod=s.heartbeat,
            raftMinTimeout=s.election_min,
            raftMaxTimeout=s.election_max,
            leaderFallbackTimeout=s.leader_fallback,
            connectionTimeout=s.connection_timeout,
            connectionRetryTime=s.reconnect,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            # Staggered: the k-th of n nodes (by address) compacts at (1 + k/n)
            # times the threshold, so the nodes do not all fork, serialise and
            # rewrite their journals at the same moment (measured: three at once
            # on two cores stalled commits for ~150 ms at 50,000 entries).
            logCompactionMinEntries=int(s.compaction_min_entries * stagger),
            logCompactionMinTime=s.compaction_min_time * stagger,
            appendEntriesBatchSizeBytes=s.batch_bytes,
            dnsFailCacheTime=1.0,
            bindAddress=bind,  # host:port to listen on (None: self_addr)
        )

    def _install_hooks(self, s: RaftSettings) -> None:
        """Wrap the pysyncobj internals this replica changes (see _pysyncobj)."""
        # Group commit.  With batching off, pysyncobj sends an append_entries
        # round after *each* queued command; while the tick thread drains the
        # queue we defer those sends and send once, so N commands travel in one
        # message per follower and cost one follower fsync.  (Name-mangled
        # private method: instance attribute lookup comes first.)
        self._pso_send_append_entries = pso.wrap_method(self, "sendAppendEntries",
                                                        self._send_append_entries)
        # Every incoming message passes _on_message first (pre-vote, vote dedupe).
        self._pso_on_message = pso.intercept_messages(self, self._on_message)
        # Snapshot installation that keeps what the follower already holds.
        self._pso_load_dump_file = pso.wrap_method(self, "loadDumpFile", self._load_dump_file)
        self._pso_apply_log_entries = pso.wrap_method(self, "applyLogEntries",
                                                      self._apply_log_entries)
        # pysyncobj silently turns useFork off when a custom serializer is
        # given (Serializer.__init__: "... and serializer is None"), so our
        # msgpack snapshots were written on the Raft thread.  Its fork path
        # calls the custom serializer in the child just as well: turn it on.
        pso.enable_fork_snapshots(self, s.fork_snapshots and hasattr(os, "fork"))

    def _journal_ready(self) -> None:
        """Connect the journal to this replica once pysyncobj made it."""
        journal = self.journal_path.journal
        if journal is None:
            return
        if hasattr(journal, "on_failure"):
            journal.on_failure = lambda exc: STORAGE_FAILURE_HOOK(exc, journal.synced_index)
            journal.applied = lambda: pso.last_applied(self)

    @property
    def recovery(self) -> dict | None:
        """Set while this node lacks entries it had made durable (and may have
        acknowledged): it does not campaign, serves nothing, and votes only for
        a log that covers them."""
        journal = self.journal_path.journal
        return getattr(journal, "recovery", None) if journal is not None else None

    def _apply_log_entries(self):
        """Apply what is committed; tell the followers at once only if one of
        them may be waiting for a command it forwarded (LAZY_COMMIT_NOTICE)."""
        notify = self._pso_apply_log_entries()
        if notify and self.LAZY_COMMIT_NOTICE and pso.is_leader(self):
            if pso.commands_queued(self):
                return False  # this tick drains the queue: that round carries the index
            return pso.now() - self._forwarded_at < self.FORWARD_WINDOW
        return notify

    def _send_append_entries(self):
        if self._draining:
            self._send_deferred = True
            return None
        out = self._pso_send_append_entries()
        self._sync_own_log()
        return out

    def _sync_own_log(self) -> None:
        """The leader's own append is synced right after it went out to the
        followers, so its fsync overlaps theirs and the network round trip
        (thesis 10.2.1) instead of waiting for the next tick after the acks."""
        journal = self.journal_path.journal
        if journal is not None:
            journal.sync()

    def _checkCommandsToApply(self):
        self._draining, self._send_deferred = True, False
        try:
            super()._checkCommandsToApply()
        finally:
            self._draining = False
        sent = self._send_deferred
        if sent:
            self._send_deferred = False
            self._pso_send_append_entries()
        # queued commands are on their way (appended and sent, or forwarded)
        with self._sent_cond:
            self.rounds_sent += 1
            self._sent_cond.notify_all()
        if sent:
            self._sync_own_log()

    def wait_sent(self, since: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the Raft thread has drained its
        command queue (appended and sent, or forwarded to the leader) after the
        ``rounds_sent`` value ``since``; True if it has."""
        with self._sent_cond:
            return self._sent_cond.wait_for(lambda: self.rounds_sent > since, timeout)

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
    _UNSYNCED_OK = frozenset({"append_entries", "apply_command", "apply_command_response",
                              "pre_vote", "pre_vote_response"})

    def _onTick(self, timeToWait=0.0):
        if not self._hooks_installed.is_set():  # still in __init__ (see there)
            self._hooks_installed.wait(max(timeToWait, 0.01))
            return None
        journal = self.journal_path.journal
        if journal is not None:
            journal.sync()
        if self.recovery is not None and not pso.is_leader(self):
            # lacking acknowledged entries: never campaign (wait for a leader)
            pso.set_election_deadline(self, pso.now() + pso.election_timeout(self))
        elif self._pre_vote:
            self._gate_election()
        while True:  # admin calls from other threads run here, on the Raft thread
            try:
                fn = self._raft_calls.get_nowait()
            except queue.Empty:
                break
            fn()
        return super()._onTick(timeToWait)

    def compact_now(self) -> None:
        """Take a snapshot and compact the journal at the next opportunity."""
        self._raft_calls.put(self.forceLogCompaction)

    def transfer_leadership(self, target: str | None, callback) -> None:
        """Ask pysyncobj (on its own thread) to hand leadership to ``target``
        (a Raft address; None = the most caught-up follower).  ``callback(res,
        err)`` runs on the Raft thread; err 0 means the request was sent."""
        self._raft_calls.put(lambda: self.transferLeadership(target, callback))

    def _persist_before_send(self, node, message) -> None:
        journal = self.journal_path.journal
        kind = message.get("type") if isinstance(message, dict) else None
        if journal is not None and kind not in self._UNSYNCED_OK:
            journal.sync()
        if self._trace:
            t = message.get("type") if isinstance(message, dict) else "handshake"
            self._trace("send", t, getattr(node, "id", str(node)), message
                        if t in ("next_node_idx", "response_vote") else None)

    # --------------------------------------------------------------- status
    def can_serve(self) -> bool:
        """True if this node currently sees a leader and a quorum of peers.

        A node that cannot reach a majority proposes nothing: it answers
        "unavailable" at once instead of queueing a guess that might be
        counted after the client gave up.
        """
        try:
            return self._getLeader() is not None and self.hasQuorum and self.recovery is None \
                and self.raftCommitIndex - self.raftLastApplied <= self.APPLY_LAG_BOUND
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
        role = pso.ROLES.get(st["state"], str(st["state"]))
        leader = st["leader"]
        journal = self.journal_path.journal
        peers = sum(1 for k, v in st.items() if k.startswith("partner_node_status_server_")
                    and v == 2)
        return {
            "peers_connected": peers,
            "role": role,
            "term": st["raft_term"],
            "commit_index": st["commit_idx"],
            "last_applied": st["last_applied"],
            "leader": getattr(leader, "id", None) if leader is not None else None,
            "has_quorum": bool(st["has_quorum"]),
            "log_len": st["log_len"],
            "log_start": journal[0][1] if journal is not None and len(journal) else 0,
            "journal_syncs": journal.syncs if journal else 0,
            "synced_index": journal.synced_index if journal else 0,
            "recovering": self.recovery["reason"] if self.recovery else None,
        }

