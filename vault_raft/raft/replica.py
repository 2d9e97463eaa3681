"""The pysyncobj replica that carries the vault state machine.

What this adapter changes in pysyncobj 0.3.17, and why (each change is narrow, and
the version check below refuses any other pysyncobj):

* **Persist, then send.**  pysyncobj obtains its journal from
  ``pysyncobj.syncobj.createJournal``; for journal paths of type
  :class:`_DurablePath` we return a :class:`DurableJournal` (checksummed,
  fsynced, Raft-conformant truncation).  Every message goes through the
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
  (the child takes no lock, see ``_write_snapshot``).  On load the
  journal is aligned to the snapshot so a crash between snapshot and
  compaction loses nothing.
* **Mutual TLS only.**  Nodes talk through :class:`MtlsTransport` (TLS 1.3,
  peers identified by their fleet certificates, msgpack frames: nothing on
  the wire is unpickled).  pysyncobj's own TCP transport, its readonly
  connections and its utility commands are not used.  (The deterministic
  simulation passes its in-memory transport as ``transport_class``.)
* **Lazy commit notices.**  No round that only carries a new commit index
  after each commit, unless a follower may be waiting for a command it
  forwarded (``LAZY_COMMIT_NOTICE``).
* **Staggered compaction.**  The k-th of n nodes compacts at (1 + k/n) times
  the thresholds, so the nodes do not all snapshot at once.  The snapshot
  child runs at the lowest CPU priority, and the journal is segmented:
  compaction deletes old segment files on a helper thread instead of
  rewriting the log on the Raft thread.
* **Membership changes** (:mod:`.membership`): dynamic membership is on; its
  entries are parsed with an unpickler that builds only lists and strings,
  and each applied or reverted entry updates the node ids, certificate pins
  and revocations the mTLS transport checks (kept in snapshots too).
* Timeouts tuned for a vault: an isolated leader steps down after
  ``leader_fallback`` seconds; peers may be dialled through a mapped address
  (fault-injection proxies).
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import logging
import os
import queue
import signal
import threading
from typing import Callable

import msgpack
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON

from vault_raft.core.machine import VaultState
from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft import membership as _members
from vault_raft.raft.transport import MtlsTransport, TlsConfig
from vault_raft.storage.journal import (
    DurableJournal,
    JournalCorrupt,
    atomic_write,
    fsync_dir,
)

log = logging.getLogger("vault_raft.replica")

SNAPSHOT_MAGIC = b"VRS1"
FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


class _DurablePath(str):
    """A journal path that asks for a :class:`DurableJournal` (or, in the
    deterministic simulation, for the journal ``factory`` returns)."""

    journal: DurableJournal | None = None
    trace: Callable | None = None
    factory: Callable | None = None
    segment_bytes: int | None = None
    snapshot_last: tuple | None = None  # (index, term) the node's snapshot covers
    truncate_after: int | None = None
    durability_mark: bool = True


def _stop_on_storage_failure(exc: OSError, synced_index: int) -> None:
    """What a node does when its disk fails (replaced by the node process,
    which restarts itself): stop at once, acknowledging nothing more."""
    logging.shutdown()
    os._exit(75)


#: Called as ``hook(error, last synced index)`` on the Raft thread when the
#: journal cannot write or sync; must not return.
STORAGE_FAILURE_HOOK: Callable[[OSError, int], None] = _stop_on_storage_failure


def _create_journal(journal_file=None):
    """The journal for a :class:`_DurablePath`; None: pysyncobj's own."""
    if isinstance(journal_file, _DurablePath):
        kw = dict(snapshot_last=journal_file.snapshot_last,
                  truncate_after=journal_file.truncate_after,
                  durability_mark=journal_file.durability_mark)
        if journal_file.factory is not None:
            journal_file.journal = journal_file.factory(str(journal_file),
                                                        trace=journal_file.trace, **kw)
        else:
            journal_file.journal = DurableJournal(
                str(journal_file), trace=journal_file.trace,
                segment_bytes=journal_file.segment_bytes, **kw)
        return journal_file.journal
    return None


def _durable_replace(src: str, dst: str) -> None:
    """pysyncobj's serializer renames a snapshot into place (one it wrote, or
    one a leader sent) without syncing it: here the file is synced before the
    rename and the directory after, in every path."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(dst)


# pysyncobj logs CRITICAL "truncating already-applied log entries" whenever an
# old or duplicated append reaches a follower, and then asks the journal to
# truncate -- which the Raft-conformant journal ignores (it cuts only on a term
# conflict, and stops the node itself if that would cut an applied entry).  The
# line is a false alarm here; it is kept out of the node log.
pso.install_hooks(_create_journal, _durable_replace,
                  quiet_truncation_alarm=lambda: DurableJournal.RAFT_CONFORMANT_TRUNCATION)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this (forked) process when the thread
    that forked it ends -- when the node process dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError):
        os._exit(1)  # cannot guarantee it: write no snapshot (pysyncobj retries later)


def _snapshot_bytes(state_blob: bytes, entries: list, cluster: list,
                    membership: dict | None = None) -> bytes:
    snap = {"v": 1, "state": state_blob, "entries": entries, "cluster": cluster}
    if membership is not None:
        snap["membership"] = membership
    body = msgpack.packb(snap, use_bin_type=True)
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

    PRE_VOTE = True  # `vault-raft simulate --no-pre-vote` switches it off

    def __init__(self, *, election_min=0.4, election_max=1.0, heartbeat=0.05,
                 leader_fallback=1.0, connection_timeout=1.5, reconnect=0.3,
                 compaction_min_entries=50_000, compaction_min_time=600.0,
                 batch_bytes=65536, pre_vote=None, fork_snapshots=True,
                 segment_bytes=None, durability_mark=True):
        self.election_min = election_min
        self.election_max = election_max
        self.heartbeat = heartbeat
        self.leader_fallback = leader_fallback
        self.connection_timeout = connection_timeout
        self.reconnect = reconnect
        self.compaction_min_entries = compaction_min_entries
        self.compaction_min_time = compaction_min_time
        self.batch_bytes = int(batch_bytes)
        self.pre_vote = self.PRE_VOTE if pre_vote is None else bool(pre_vote)
        self.fork_snapshots = bool(fork_snapshots)
        # journal segment size (None: DurableJournal.SEGMENT_BYTES; tests: small)
        self.segment_bytes = None if segment_bytes is None else int(segment_bytes)
        if self.segment_bytes is not None and self.segment_bytes < 1024:
            raise TypeError("segment_bytes must be at least 1024")
        # the journal's durability mark (off only to measure what it costs: bench)
        self.durability_mark = bool(durability_mark)


class DurableReplica(SyncObj):
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
        self.journal_path = _DurablePath(os.path.join(data_dir, "raft.journal"))
        self.journal_path.trace = trace
        self.journal_path.factory = journal_factory
        self.journal_path.segment_bytes = s.segment_bytes
        self.journal_path.truncate_after = truncate_after
        self.journal_path.durability_mark = s.durability_mark
        self.journal_path.snapshot_last = self._check_snapshot_file()
        self._tls_config = tls
        self.membership = _members.Membership(
            {addr: nid for nid, addr in tls.peers.items()} if tls is not None else None)
        self._proposing_change = False
        if transport_class is None:
            if tls is None:
                raise TypeError("a replica talks mutual TLS: pass tls (a TlsConfig)")
            transport_class = MtlsTransport
        members = sorted({str(self_addr), *map(str, partners)})
        stagger = 1.0 + members.index(str(self_addr)) / len(members)
        conf = SyncObjConf(
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
        self._draining = False
        self._send_deferred = False
        self._raft_calls: queue.SimpleQueue = queue.SimpleQueue()
        self._pre_vote = s.pre_vote
        self._lease = s.election_min  # heard from a leader this recently: deny pre-votes
        self._heard_leader = float("-inf")
        self._pv_term, self._pv_votes, self._pv_granted = 0, set(), False
        self._voters: dict[int, set] = {}
        self._forwarded_at = float("-inf")
        self.rounds_sent = 0  # command-queue drains done by the Raft thread (wait_sent)
        self._sent_cond = threading.Condition()
        super().__init__(self_addr, partners, conf,
                         transportClass=transport_class)
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
        self._install_membership_hooks()
        self._journal_ready()

    # ------------------------------------------------------------ membership
    def _install_membership_hooks(self) -> None:
        """Membership entries are read with :func:`membership.parse` (no
        unrestricted unpickling), and each change pysyncobj makes to its
        cluster updates :attr:`membership` (ids, pins, revocations)."""
        pso.wrap_method(self, "parseChangeClusterRequest", self._parse_change)
        self._pso_change_cluster = pso.wrap_method(self, "changeCluster", self._change_cluster)
        self._pso_do_change_cluster = pso.wrap_method(self, "doChangeCluster",
                                                      self._do_change_cluster)

    @staticmethod
    def _parse_change(command: bytes):
        if command[:1] != bytes([_members.MEMBERSHIP]):
            return None
        try:
            c = _members.parse(command)
        except _members.MembershipError as exc:
            log.critical("a membership entry in the log does not parse (%s): ignored", exc)
            return None
        return [c.kind, c.addr, c.addr, c.node_id, c.cert_sha256]

    def _change_cluster(self, request) -> bool:
        # the leader, before appending a proposed change: it is in the log only if True
        self._proposing_change = True
        try:
            return self._pso_change_cluster(request)
        finally:
            self._proposing_change = False

    def _do_change_cluster(self, request, reverse=False) -> bool:
        changed = self._pso_do_change_cluster(request, reverse)
        # appended by a follower, or replayed after a restart: the entry is in
        # the log even where pysyncobj's cluster already had the change (from
        # the config or a snapshot), so its pin or revocation holds
        if changed or not (reverse or self._proposing_change):
            self.membership.apply(_members.Change(request[0], request[1], request[3],
                                                  request[4]), reverse)
        return changed

    def propose_membership(self, change: "_members.Change", callback) -> None:
        """Propose a membership change (this node must lead; pysyncobj refuses
        it with REQUEST_DENIED while another change is uncommitted, or when it
        adds a member or removes a non-member or the leader itself).
        ``callback(result, fail_reason)`` runs on the Raft thread once applied."""
        self._applyCommand(_members.entry_bytes(change), callback)

    def members(self) -> list[str]:
        """The Raft addresses of the cluster as this node's log has it."""
        for _ in range(5):
            try:
                return sorted({pso.self_node(self).id,
                               *(n.id for n in pso.other_nodes(self))})
            except RuntimeError:  # changed on the Raft thread meanwhile
                continue
        return []

    def _check_snapshot_file(self) -> tuple | None:
        """The (index, term) the snapshot file covers, or None if there is none.
        A damaged snapshot is moved aside (``.damaged``) and counts as none:
        the journal then notices what it lacks and recovers it from the
        leader (see :class:`DurableJournal`)."""
        if not os.path.exists(self.snapshot_path):
            return None
        try:
            snap = read_snapshot(self.snapshot_path)
            self._check_state(snap["state"])
            return tuple(snap["entries"][0])[1:]
        except (JournalCorrupt, ValueError, TypeError, KeyError, IndexError) as exc:
            aside = self.snapshot_path + ".damaged"
            log.error("snapshot %s is damaged (%s): moved to %s; the node recovers what it "
                      "covered from its peers", self.snapshot_path, exc, aside)
            os.replace(self.snapshot_path, aside)
            fsync_dir(self.snapshot_path)
            return None

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

    def _load_dump_file(self, clearJournal):
        """pysyncobj installs a snapshot a leader sends by clearing the journal,
        even when the follower's log already holds the snapshot's last entry
        and more: the follower then lacks entries it acknowledged, perhaps
        committed thanks to its vote (found by the simulation, seed 255).
        Raft's InstallSnapshot rule: if the log holds an entry with the
        snapshot's last index and term, keep the log after it.  Our log then
        covers the snapshot, so we keep log and state and skip the install
        (pysyncobj replies with our log's end).  Candidate upstream fix."""
        journal = self.journal_path.journal
        if clearJournal and self.RAFT_CONFORMANT_SNAPSHOT and journal is not None and len(journal):
            try:
                last = tuple(read_snapshot(self.snapshot_path)["entries"][0])
            except (JournalCorrupt, OSError, ValueError, TypeError, KeyError, IndexError):
                last = None
            first = journal[0][1]
            if last is not None and first <= last[1] <= journal[-1][1] \
                    and tuple(journal[last[1] - first])[1:] == last[1:]:
                if self._trace:
                    self._trace("snapshot_kept_log", last[1])
                return None
        return self._pso_load_dump_file(clearJournal)

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

    # ------------------------------------------------------ pre-vote, votes
    # pysyncobj has no pre-vote: a node that was cut off from the leader but
    # not from everyone (one-way links, a bridge, a ring) keeps raising its
    # term, and when its vote requests reach the healthy leader's followers
    # they adopt the term and the leader is deposed.  Raft thesis 9.6: before
    # a real election a node asks "would you vote for me in term+1?" without
    # anyone changing term; a node that heard from a leader within the minimum
    # election timeout says no (so does a leader with a quorum).  Only with a
    # majority of yeses does pysyncobj start its election.  Leadership
    # transfers (TimeoutNow) skip the pre-vote, as in etcd.

    def _term(self) -> int:
        return pso.current_term(self)

    def _log_position(self) -> tuple[int, int]:
        last = pso.last_log_entry(self)
        return last[2], last[1]  # (term, index): compared as a tuple

    def _gate_election(self) -> None:
        if pso.is_leader(self) or not pso.has_self_node(self):
            return
        now = pso.now()
        if pso.election_deadline(self) >= now or pso.transfer_in_progress(self):
            return
        if self._pv_granted:  # a majority would vote: let pysyncobj elect now
            self._pv_granted = False
            return
        others = pso.other_nodes(self)
        pso.set_election_deadline(self, now + pso.election_timeout(self))
        if pso.leader(self) is not None:
            # the timer fired: the leader is lost, as when pysyncobj starts an
            # election, so requests here are refused at once instead of waiting
            pso.forget_leader(self)
        self._pv_term, self._pv_votes = self._term() + 1, {None}
        if not others:
            self._pv_granted = True
            return
        term, idx = self._log_position()
        for node in others:
            pso.transport(self).send(node, {"type": "pre_vote", "term": self._pv_term,
                                            "last_log_index": idx, "last_log_term": term})

    def _vote_position(self) -> tuple[int, int]:
        """The log position a candidate must reach for this node's vote: its
        log's end, or, while recovering, the end of the log it had made
        durable (so a damaged log votes as the intact one would have)."""
        pos = self._log_position()
        rec = self.recovery
        return max(pos, (rec["need_term"], rec["need"])) if rec else pos

    def _would_vote(self, msg: dict) -> bool:
        if msg["term"] <= self._term():
            return False
        if pso.is_leader(self):
            return not self.hasQuorum  # a leader with a quorum keeps it
        if pso.now() - self._heard_leader < self._lease:
            return False
        return (msg["last_log_term"], msg["last_log_index"]) >= self._vote_position()

    def _on_message(self, node, msg) -> None:
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "request_vote" and self.recovery is not None and \
                (msg.get("last_log_term", -1), msg.get("last_log_index", -1)) \
                < self._vote_position():
            return  # a candidate behind what this node acknowledged gets no vote (nor term)
        if kind == "append_entries" and msg.get("term", -1) >= self._term():
            self._heard_leader = pso.now()
        elif kind == "apply_command":
            self._forwarded_at = pso.now()
        elif kind == "pre_vote":
            pso.transport(self).send(node, {"type": "pre_vote_response", "term": msg["term"],
                                            "granted": self._would_vote(msg)})
            return
        elif kind == "pre_vote_response":
            if msg["granted"] and msg["term"] == self._pv_term == self._term() + 1 \
                    and not pso.is_leader(self):
                self._pv_votes.add(node)
                if len(self._pv_votes) > (len(pso.other_nodes(self)) + 1) / 2:
                    self._pv_granted = True
                    pso.set_election_deadline(self, 0)  # elect on the next tick
            return
        elif kind == "response_vote":
            # pysyncobj counts vote messages, not voters: a duplicated vote
            # would count twice (two leaders in one term under a network that
            # duplicates; TCP does not, but the count must not depend on it).
            voters = self._voters.setdefault(msg.get("term"), set())
            if node in voters:
                return
            voters.add(node)
            if len(self._voters) > 4:
                for t in sorted(self._voters)[:-4]:
                    del self._voters[t]
        return self._pso_on_message(node, msg)

    # ------------------------------------------------ persist-before-send
    # Raft thesis 10.2.1: the leader may write its own log in parallel with
    # replicating it, provided it counts itself toward a commit only once its
    # copy is durable.  pysyncobj computes the commit index only at the start
    # of ``_onTick``, so we sync there; every other message that depends on the
    # log or the vote (acks, votes) is preceded by a sync.
    _UNSYNCED_OK = frozenset({"append_entries", "apply_command", "apply_command_response",
                              "pre_vote", "pre_vote_response"})

    def _onTick(self, timeToWait=0.0):
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

    # ------------------------------------------------------------ snapshots
    def _write_snapshot(self, filename: str, raft_data) -> None:
        last, prev, cluster = raft_data
        if os.getpid() != self._pid:
            # In pysyncobj's forked child.  Die with the node: a child left
            # behind by a killed node could rename an older snapshot over the
            # one a restarted node already compacted its journal against.
            _die_with_parent()
            if os.getppid() != self._pid:  # the node died before we asked
                os._exit(1)
            # The lowest CPU priority: on a busy machine the nodes' own work
            # comes first (measured at 1000 guesses/s: the slowest second's
            # p99 fell from 26-79 ms to 26-49 ms; the child lived 0.33-0.48 s
            # instead of 0.24-0.30 s).
            os.nice(self.SNAPSHOT_NICE)
            # One thread, an image of the state as the Raft thread left it --
            # and a lock another thread may have held at the fork would never
            # be released here, so do not take it.
            blob = self._snapshot_state()
        else:
            with self._state_lock:
                blob = self._snapshot_state()
        data = _snapshot_bytes(blob, [list(last), list(prev)],
                               sorted(getattr(n, "id", str(n)) for n in cluster),
                               self.membership.to_dict(lock=os.getpid() == self._pid))
        atomic_write(filename, data)  # pysyncobj renames it over the snapshot next
        if self._trace:
            self._trace("snapshot", last[1])

    def _read_snapshot(self, filename: str):
        try:
            snap = read_snapshot(filename)
            with self._state_lock:
                self._restore_state(snap["state"])
            if "membership" in snap:
                self.membership.load(snap["membership"])
        except (JournalCorrupt, OSError, ValueError) as exc:
            # A snapshot we cannot read (received or local) must not be
            # silently skipped: that would forget committed state.  Crash-stop.
            log.critical("cannot load snapshot %s: %s; stopping", filename, exc)
            os._exit(70)
        fsync_dir(filename)  # a received snapshot was renamed without a sync
        last, prev = (tuple(e) for e in snap["entries"])
        self._align_journal(prev, last)
        # pysyncobj compares the list with its own Node: leave this node out
        return (last, prev, [a for a in snap["cluster"] if a != str(self_id)]
                if (self_id := pso.self_node(self)) else snap["cluster"])

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
        # The loaded records are long-lived and acyclic: keep the cyclic GC from
        # walking them (a full collection over 1M records is a pause of its own,
        # and after a snapshot fork it would copy every page the child shares).
        gc.freeze()

    def status(self) -> dict:
        st = super().status()
        st["records"] = self.read_state(lambda v: v.counts())
        return st
