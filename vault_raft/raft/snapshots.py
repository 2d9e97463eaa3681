"""The replica's snapshot hooks.

A snapshot file (:mod:`vault_raft.storage.snapshot`) is msgpack with a
SHA-256 trailer: nothing in it is unpickled.  pysyncobj writes one
through its ``serializer`` hook (:meth:`SnapshotFiles._write_snapshot`), in a
forked child that dies with the node, and reads one through its
``deserializer`` hook (:meth:`SnapshotFiles._read_snapshot`), which aligns
the journal to the snapshot so a crash between snapshot and compaction loses
nothing.  A snapshot a leader sends is kept out when the follower's log
already covers it (:meth:`SnapshotFiles._load_dump_file`).

The writer also leaves ``snapshot.bin.stats`` beside it (JSON: the index
covered, the bytes written and the seconds the write took, from the start of
the writer to the file synced, before pysyncobj renames it into place): the
child cannot reach the node's metrics, so the node reads them from there
(:func:`read_snapshot_stats`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vault_raft.raft import _pysyncobj as pso
from vault_raft.storage.errors import JournalCorrupt
from vault_raft.storage.files import atomic_write, durable_rename, fsync_dir
from vault_raft.storage.snapshot import read_snapshot, snapshot_bytes

log = logging.getLogger("vault_raft.replica")


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this (forked) process when the thread
    that forked it ends -- when the node process dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError):
        os._exit(1)  # cannot guarantee it: write no snapshot (pysyncobj retries later)


def stats_path(snapshot_path: str) -> str:
    """Where the writer of ``snapshot_path`` records how long it took."""
    return snapshot_path + ".stats"


def read_snapshot_stats(snapshot_path: str) -> dict | None:
    """``{"index", "bytes", "duration_seconds", "written"}`` of the last snapshot
    this node wrote (None: none yet, or the file is unreadable)."""
    try:
        with open(stats_path(snapshot_path), "rb") as f:
            st = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(st, dict) or not isinstance(st.get("duration_seconds"), (int, float)):
        return None
    return st


class SnapshotFiles:
    """The snapshot side of :class:`~vault_raft.raft.replica.DurableReplica`
    (a mixin: it uses the replica's paths, journal, state hooks and trace)."""

    RAFT_CONFORMANT_SNAPSHOT: bool
    SNAPSHOT_NICE: int
    snapshot_path: str
    journal_path: Any  # the replica's DurablePath
    membership: Any  # membership.Membership
    _pid: int
    _state_lock: threading.Lock
    _trace: Callable | None
    _pso_load_dump_file: Callable
    if TYPE_CHECKING:
        def _snapshot_state(self) -> bytes: ...

        def _restore_state(self, blob: bytes) -> None: ...

        def _check_state(self, blob: bytes) -> None: ...

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
            durable_rename(self.snapshot_path, aside)
            return None

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

    def _write_snapshot(self, filename: str, raft_data) -> None:
        t0 = time.monotonic()
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
        data = snapshot_bytes(blob, [list(last), list(prev)],
                              sorted(getattr(n, "id", str(n)) for n in cluster),
                              self.membership.to_dict(lock=os.getpid() == self._pid))
        atomic_write(filename, data)  # pysyncobj renames it over the snapshot next
        try:  # for the node's metrics; a snapshot is not refused for want of it
            atomic_write(stats_path(self.snapshot_path), json.dumps({
                "index": last[1], "bytes": len(data),
                "duration_seconds": round(time.monotonic() - t0, 6),
                "written": time.time()}).encode())
        except OSError:
            pass
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
