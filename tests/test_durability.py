"""Persist before ack: every append and vote is on disk before a message depends on it.

Three in-process replicas on 127.0.0.1 record, in order, each journal write,
each ``fdatasync`` of a journal file, each durable term/vote change and each
message sent.  The checker demands, per node:

* an ack (``next_node_idx`` success for index N) is sent only after an
  ``fdatasync`` of the journal that followed the append of entry N-1;
* a vote (``response_vote`` for term T) is sent only after term T and the
  vote were stored durably;
* whenever a node reports a commit to its caller, its own journal is synced
  at least up to its commit index (the leader writes its log in parallel with
  replication and must sync before it counts itself toward a majority).

A negative control runs the same cluster with ``sync`` disabled and asserts
the checker reports violations, so the check can fail.
"""
import os
import threading

import pytest
from conftest import free_base_port
from raft_tls import fleet_tls

from vault_raft.core.machine import CRED_ID_LEN, NONCE_LEN, encode_command
from vault_raft.node.replica import VaultReplica
from vault_raft.ops.cluster import wait_until
from vault_raft.raft.settings import RaftSettings
from vault_raft.storage import durability as DU
from vault_raft.storage import journal as J
from vault_raft.storage import segments as SG
from vault_raft.storage.errors import JournalCorrupt, StorageFailed


def indexes(journal) -> list[int]:
    """The Raft indexes a journal holds, read as pysyncobj reads it (len, [i])."""
    return [journal[i][1] for i in range(len(journal))]


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.events = {}  # node -> [event]
        self.fd_owner = {}

    def tracer(self, node):
        def trace(kind, *args):
            with self.lock:
                self.events.setdefault(node, []).append((kind, *args))
        return trace


def _ticket():
    """The ticket fields a node adds to an enroll command (good for ever here)."""
    return {"nonce": os.urandom(NONCE_LEN), "ticket_exp": 2**61, "ticket_seq": 0,
            "cred_id": os.urandom(CRED_ID_LEN)}


def check(recorder: Recorder) -> list[str]:
    violations = []
    for node, events in recorder.events.items():
        appended_at = {}  # idx -> position of its append
        last_sync_pos = -1
        durable_terms = set()
        for pos, ev in enumerate(events):
            kind = ev[0]
            if kind == "append":
                appended_at[ev[1]] = pos
            elif kind == "fdatasync":
                last_sync_pos = pos
            elif kind == "violation":
                violations.append(f"{node}: {ev[1]}")
            elif kind == "term":
                durable_terms.add((ev[1], ev[2]))
            elif kind == "send" and ev[1] == "next_node_idx" and ev[3]["success"]:
                n = ev[3]["next_node_idx"] - 1
                if n in appended_at and appended_at[n] > last_sync_pos:
                    violations.append(f"{node}: ack of entry {n} sent before it was synced")
            elif kind == "send" and ev[1] == "response_vote":
                term = ev[3]["term"]
                if not any(t == term and v == ev[2] for t, v in durable_terms):
                    violations.append(f"{node}: vote for {ev[2]} in term {term} sent before "
                                      "it was durable")
    return violations


def run_cluster(tmp_path, recorder, monkeypatch, disable_sync=False):
    real_fdatasync = os.fdatasync
    owner: dict[str, str] = {}  # node directory -> node address

    def fdatasync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        real_fdatasync(fd)
        node = owner.get(os.path.dirname(target))
        if node is not None and ".journal" in os.path.basename(target):
            recorder.tracer(node)("fdatasync", fd)

    monkeypatch.setattr(J.os, "fdatasync", fdatasync)
    if disable_sync:
        monkeypatch.setattr(J.DurableJournal, "sync", lambda self: None)
    base = free_base_port(3)
    addrs = [f"127.0.0.1:{base + i}" for i in (1, 2, 3)]
    reps = []
    tls = fleet_tls(tmp_path / "pki", addrs)
    for i, a in enumerate(addrs):
        owner[str(tmp_path / f"n{i}")] = a
    try:
        for i, a in enumerate(addrs):
            rep = VaultReplica(a, [x for x in addrs if x != a], str(tmp_path / f"n{i}"),
                               settings=RaftSettings(), trace=recorder.tracer(a), tls=tls[a])
            reps.append(rep)
        wait_until(lambda: any(r.can_serve() for r in reps), 20, what="a leader")
        done = threading.Semaphore(0)

        def committed(rep):
            def cb(res, err):
                if rep.journal_path.journal.synced_index < rep.raftCommitIndex:
                    recorder.tracer(rep.selfNode.id)(
                        "violation", f"commit {rep.raftCommitIndex} reported with journal "
                                     f"synced only to {rep.journal_path.journal.synced_index}")
                done.release()
            return cb

        for k in range(40):
            reps[k % 3].propose(encode_command("enroll", user=f"u{k}".encode(), now=k,
                                               max_attempts=3, version=b"v" * 16,
                                               opaque_record=b"r" * 192,
                                               sealed_secret=b"s" * 40, **_ticket()),
                                committed(reps[k % 3]))
        for _ in range(40):
            assert done.acquire(timeout=10)
        # Force a new election: stop the leader, wait for another.
        leader = next(r for r in reps if r.status()["role"] == "leader")
        leader.destroy_synchronous()
        reps.remove(leader)
        wait_until(lambda: any(r.status().get("role") == "leader" for r in reps), 20,
                   what="a re-election")
        for k in range(10):
            reps[k % 2].propose(encode_command("begin_attempt", user=b"u1", now=100 + k,
                                               attempt_id=os.urandom(16)),
                                committed(reps[k % 2]))
        for _ in range(10):
            done.acquire(timeout=10)
    finally:
        for r in reps:
            r.destroy_synchronous()


def test_appends_and_votes_are_durable_before_they_are_acknowledged(tmp_path, monkeypatch):
    rec = Recorder()
    run_cluster(tmp_path, rec, monkeypatch)
    acks = sum(1 for evs in rec.events.values() for e in evs
               if e[0] == "send" and e[1] == "next_node_idx" and e[3]["success"])
    votes = sum(1 for evs in rec.events.values() for e in evs
                if e[0] == "send" and e[1] == "response_vote")
    assert acks >= 10 and votes >= 2, (acks, votes)  # group commit batches entries per ack
    assert check(rec) == []


def test_checker_catches_acks_before_sync(tmp_path, monkeypatch):
    rec = Recorder()
    run_cluster(tmp_path, rec, monkeypatch, disable_sync=True)
    found = check(rec)
    assert any("before it was synced" in v for v in found)
    assert any("synced only to" in v for v in found)


# ----------------------------------------------------------- the journal file

def _fill(path, n, term=1):
    j = J.DurableJournal(path)
    for i in range(1, n + 1):
        j.add(f"cmd{i}".encode(), i, term)
    j._destroy()


def test_torn_tail_is_recovered(tmp_path):
    path = str(tmp_path / "j")
    _fill(path, 10)
    size = os.path.getsize(path)
    with open(path, "ab") as f:  # a record cut short by a crash
        f.write(SG.encode_record(b"cmd11-long-command", 11, 1)[:13])
    j = J.DurableJournal(path)
    assert len(j) == 10 and j[-1] == (b"cmd10", 10, 1)
    assert os.path.getsize(path) == size
    j.add(b"cmd11", 11, 1)
    j._destroy()
    assert len(J.DurableJournal(path)) == 11


def test_torn_tail_with_bad_checksum_and_zero_fill(tmp_path):
    path = str(tmp_path / "j")
    _fill(path, 5)
    rec = bytearray(SG.encode_record(b"cmd6", 6, 1))
    rec[-1] ^= 0xFF  # last record's body damaged: never synced, never acked
    with open(path, "ab") as f:
        f.write(bytes(rec) + b"\0" * 64)
    assert len(J.DurableJournal(path)) == 5


def test_damage_in_the_middle_is_fatal(tmp_path):
    path = str(tmp_path / "j")
    _fill(path, 10)
    data = bytearray(open(path, "rb").read())
    data[len(SG.HEADER) + 30] ^= 0x01  # inside the first record
    open(path, "wb").write(bytes(data))
    with pytest.raises(JournalCorrupt):
        J.DurableJournal(path)


def _flip_last_byte(path):
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_meta_is_checksummed_and_restored_from_the_mark(tmp_path):
    path = str(tmp_path / "j")
    j = J.DurableJournal(path)
    j.add(b"x", 1, 7)
    j.setCurrentTerm(7, "127.0.0.1:1")
    j._destroy()
    j = J.DurableJournal(path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, "127.0.0.1:1")
    j._destroy()
    _flip_last_byte(path + ".meta")  # damaged: the mark's copy is used (and written back)
    j = J.DurableJournal(path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, "127.0.0.1:1")
    j._destroy()
    os.unlink(path + ".meta")  # deleted: likewise
    j = J.DurableJournal(path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, "127.0.0.1:1")
    j._destroy()
    # both lost (beyond the fault model): the log's last term, and no vote in it
    os.unlink(path + ".meta")
    os.unlink(path + ".mark")
    j = J.DurableJournal(path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, DU.LOST_VOTE)


def test_a_log_shorter_than_the_mark_recovers_before_it_trusts_itself(tmp_path):
    path = str(tmp_path / "j")
    _fill(path, 10)
    size = os.path.getsize(path)
    os.truncate(path, size - 3)  # the last record, synced and maybe acknowledged, is cut
    j = J.DurableJournal(path, snapshot_last=None)
    assert len(j) == 9
    assert j.recovery is not None
    assert j.recovery["need"] == 10 and "ends at entry 9" in j.recovery["reason"]
    j._destroy()
    j = J.DurableJournal(path, snapshot_last=None)  # a restart remembers what is missing
    assert j.recovery is not None and j.recovery["need"] == 10
    j.add(b"cmd10", 10, 1)  # the leader sends it again
    j.sync()
    assert j.recovery is None
    j._destroy()
    assert J.DurableJournal(path, snapshot_last=None).recovery is None


def test_a_deleted_middle_segment_is_named(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    _fill(path, 60)
    os.unlink(SG.segment_path(path, 2))
    with pytest.raises(JournalCorrupt, match=r"j\.00000002 is missing"):
        J.DurableJournal(path)


def test_a_deleted_last_segment_is_noticed(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    _fill(path, 60)
    last = SG.list_segments(path)[-1]
    os.unlink(SG.segment_path(path, last))
    j = J.DurableJournal(path, snapshot_last=None)
    assert j.recovery is not None and j.recovery["need"] == 60 and j[-1][1] < 60


def test_a_journal_starting_after_the_snapshot_is_cleared_and_recovers(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    _fill(path, 60)
    os.unlink(path)  # the first segment; no snapshot covers entries 1..
    j = J.DurableJournal(path + "", snapshot_last=None)
    assert len(j) == 0 and j.recovery is not None and j.recovery["need"] == 60
    assert "entries 1.." in j.recovery["reason"] and "snapshot" in j.recovery["reason"]
    j._destroy()
    # a snapshot that covers the missing entries: nothing is lost
    _fill(str(tmp_path / "k"), 60)
    os.unlink(str(tmp_path / "k"))
    k = J.DurableJournal(str(tmp_path / "k"), snapshot_last=(J.DurableJournal(
        str(tmp_path / "k"))[0][1] - 1, 1))
    assert k.recovery is None


def test_commit_index_is_clamped_to_the_log(tmp_path):
    path = str(tmp_path / "j")
    _fill(path, 5)
    j = J.DurableJournal(path)
    j.setRaftCommitIndex(50)
    j._destroy()
    assert J.DurableJournal(path).getRaftCommitIndex() == 5


def test_a_storage_failure_is_reported_once_and_nothing_after_the_last_sync_is_kept(
        tmp_path, monkeypatch):
    path = str(tmp_path / "j")
    _fill(path, 5)
    j = J.DurableJournal(path)
    failures: list[OSError] = []
    j.on_failure = failures.append
    j.add(b"cmd6", 6, 1)
    real = os.fdatasync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fdatasync", full)
    for _ in range(3):
        with pytest.raises(StorageFailed):
            j.sync()
    assert len(failures) == 1 and failures[0].errno == 28
    monkeypatch.setattr(os, "fdatasync", real)
    # the node restarts with what was synced: entry 6 may be only in the page cache
    k = J.DurableJournal(path, truncate_after=j.synced_index)
    assert indexes(k) == [1, 2, 3, 4, 5]


def test_truncate_and_compact_survive_reopen(tmp_path):
    path = str(tmp_path / "j")
    _fill(path, 20)
    j = J.DurableJournal(path)
    j.deleteEntriesFrom(15)  # entries 16.. were conflicting
    j.add(b"new16", 16, 2)
    j.deleteEntriesTo(5)  # compaction: entries 1..5 are in a snapshot
    assert indexes(j) == list(range(6, 17))
    j._destroy()
    # one segment: nothing deleted on disk; the replica drops 1..5 again when
    # it loads the snapshot (_align_journal)
    j = J.DurableJournal(path)
    assert indexes(j) == list(range(1, 17))
    assert j[-1] == (b"new16", 16, 2)
    assert j[5] == (b"cmd6", 6, 1)


def _small_segments(monkeypatch, size=400):
    monkeypatch.setattr(J.DurableJournal, "SEGMENT_BYTES", size)
    monkeypatch.setattr(J.DurableJournal, "PREALLOCATE", 256)


def test_segments_roll_and_compaction_deletes_whole_segments(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    j = J.DurableJournal(path)
    for i in range(1, 61):
        j.add(f"command-{i:04d}".encode(), i, 1)
    j.sync()
    segs = j.segments
    assert len(segs) >= 4 and segs[0] == path
    assert [os.path.basename(p) for p in segs[1:3]] == ["j.00000001", "j.00000002"]
    sealed = os.path.getsize(segs[0])
    assert sealed <= J.DurableJournal.SEGMENT_BYTES  # trimmed when sealed
    j.deleteEntriesTo(40)  # entries 1..40 are in a snapshot
    assert j[0][1] == 41
    j._destroy()  # waits for the helper thread's deletions
    left = SG.list_segments(path)
    assert 0 not in left and len(left) < len(segs)
    k = J.DurableJournal(path)
    first = k[0][1]
    assert 1 < first <= 41  # whole segments only: the kept one may start earlier
    assert indexes(k) == list(range(first, 61))
    k.add(b"next", 61, 1)
    k._destroy()
    assert J.DurableJournal(path)[-1] == (b"next", 61, 1)


def test_the_next_segment_is_made_ahead_of_time(tmp_path, monkeypatch):
    """Creating a segment syncs a file and its directory: the helper thread
    does it once the last segment is half full, not the Raft thread at the roll."""
    _small_segments(monkeypatch, size=4096)
    path = str(tmp_path / "j")
    j = J.DurableJournal(path)
    i = 0
    while j._spare is None:
        i += 1
        j.add(f"command-{i:04d}".encode(), i, 1)
    j._spare.result()
    assert os.path.exists(SG.segment_path(path, 1)) and len(j.segments) == 1

    def no_create(*a):
        raise AssertionError("segment created at the roll")
    monkeypatch.setattr(SG, "atomic_write", no_create)
    while len(j.segments) == 1:
        i += 1
        j.add(f"command-{i:04d}".encode(), i, 1)
    assert j.segments[1] == SG.segment_path(path, 1)
    monkeypatch.undo()
    j._destroy()  # the spare made for segment 2, if any, is removed
    assert SG.list_segments(path) == [0, 1]
    assert indexes(J.DurableJournal(path)) == list(range(1, i + 1))


def test_truncation_into_a_sealed_segment_drops_later_segments(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    _fill(path, 60)
    j = J.DurableJournal(path)
    assert len(j.segments) >= 4
    j.add(b"conflict", 12, 2)  # 12..60 conflict: cut into segment 0 or 1
    assert indexes(j) == list(range(1, 13))
    j.sync()
    copy = str(tmp_path / "crash")
    for seq in SG.list_segments(path):  # a crash image: no close, no trim
        with open(SG.segment_path(path, seq), "rb") as src, \
                open(SG.segment_path(copy, seq), "wb") as dst:
            dst.write(src.read())
    k = J.DurableJournal(copy)
    assert indexes(k) == list(range(1, 13)) and k[-1] == (b"conflict", 12, 2)
    j._destroy()


def test_torn_tail_of_the_last_segment_is_recovered(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    _fill(path, 40)
    last = SG.segment_path(path, SG.list_segments(path)[-1])
    with open(last, "ab") as f:
        f.write(SG.encode_record(b"command-41-long", 41, 1)[:15])
    j = J.DurableJournal(path)
    assert indexes(j) == list(range(1, 41))
    j._destroy()


def test_a_crash_right_after_a_roll_leaves_an_empty_last_segment(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    j = J.DurableJournal(path)
    n = 0
    while len(j.segments) < 2:  # fill segment 0 until the next append rolls
        n += 1
        j.add(f"command-{n:04d}".encode(), n, 1)
    j.sync()
    last = j.segments[-1]
    with open(last, "r+b") as f:  # the crash: the new segment's first record never landed
        f.truncate(len(SG.HEADER))
    k = J.DurableJournal(path)  # (the segment made ahead of time may be there too: empty)
    assert indexes(k) == list(range(1, n)) and len(k.segments) >= 2
    k.add(b"again", n, 1)  # appends go on in an empty segment
    k._destroy()
    assert J.DurableJournal(path)[-1] == (b"again", n, 1)
    j._destroy()


def test_what_a_restart_reads_is_synced_before_use(tmp_path, monkeypatch):
    """A node killed before its last sync finds those entries in the page cache
    on restart; the journal syncs every segment it read before anything can
    acknowledge them."""
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    j = J.DurableJournal(path)
    for i in range(1, 41):
        j.add(f"command-{i:04d}".encode(), i, 1)  # never synced by sync(): a kill -9 now
    synced = []
    real = os.fdatasync

    def recording_fdatasync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(J.os, "fdatasync", recording_fdatasync)
    k = J.DurableJournal(path)
    assert len(k) == 40
    assert sorted(synced) == sorted(os.path.realpath(p) for p in k.segments)
    k._destroy()
    j._destroy()


def test_damage_in_a_sealed_segment_is_fatal(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    _fill(path, 40)
    first = SG.segment_path(path, 0)
    data = bytearray(open(first, "rb").read())
    data[-3] ^= 0x01  # the last record of a sealed segment; later segments are intact
    open(first, "wb").write(bytes(data))
    with pytest.raises(JournalCorrupt):
        J.DurableJournal(path)


def test_a_missing_segment_is_fatal(tmp_path, monkeypatch):
    _small_segments(monkeypatch)
    path = str(tmp_path / "j")
    _fill(path, 60)
    seqs = SG.list_segments(path)
    os.unlink(SG.segment_path(path, seqs[1]))  # a gap in the log
    with pytest.raises(JournalCorrupt):
        J.DurableJournal(path)


def test_commit_index_is_advisory_and_unsynced(tmp_path, monkeypatch, caplog):
    path = str(tmp_path / "j")
    _fill(path, 5)
    j = J.DurableJournal(path)
    synced = []
    monkeypatch.setattr(J.os, "fsync", lambda fd: synced.append(fd))
    j.setRaftCommitIndex(4)
    j.onOneSecondTimer()
    assert synced == []  # no sync, no meta rewrite for the commit index
    monkeypatch.undo()
    j._destroy()
    assert J.DurableJournal(path).getRaftCommitIndex() == 4
    with open(path + ".commit", "r+b") as f:  # torn by a crash
        f.write(b"\xff")
    with caplog.at_level("WARNING"):
        assert J.DurableJournal(path).getRaftCommitIndex() == 1
    assert "unreadable commit index" in caplog.text


def _crash_image(j, path, copy):
    """The file as a crash would leave it: synced, not closed (reserve in place)."""
    j.sync()
    with open(path, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())


def test_reserved_space_is_not_a_torn_tail(tmp_path, caplog):
    path, copy = str(tmp_path / "j"), str(tmp_path / "crash")
    j = J.DurableJournal(path)
    for i in range(1, 51):
        j.add(f"cmd{i}".encode(), i, 1)
    _crash_image(j, path, copy)
    assert os.path.getsize(copy) > j._end + J.DurableJournal.PREALLOCATE // 2  # space reserved
    with caplog.at_level("WARNING"):
        k = J.DurableJournal(copy)
    assert indexes(k) == list(range(1, 51)) and "torn" not in caplog.text
    k.add(b"cmd51", 51, 1)  # appends continue inside the reserve
    k._destroy()
    assert indexes(J.DurableJournal(copy)) == list(range(1, 52))
    j._destroy()
    assert os.path.getsize(path) == j._end  # a clean close trims the reserve


def test_torn_record_inside_the_reserve_is_dropped(tmp_path):
    path, copy = str(tmp_path / "j"), str(tmp_path / "crash")
    j = J.DurableJournal(path)
    for i in range(1, 11):
        j.add(f"cmd{i}".encode(), i, 1)
    _crash_image(j, path, copy)
    with open(copy, "r+b") as f:  # half of record 11 reached the disk
        f.seek(j._end)
        f.write(SG.encode_record(b"cmd11-long-command", 11, 1)[:20])
    k = J.DurableJournal(copy)
    assert len(k) == 10 and k[-1] == (b"cmd10", 10, 1)
    k.add(b"cmd11", 11, 1)
    k._destroy()
    assert len(J.DurableJournal(copy)) == 11
    j._destroy()


def test_truncated_entries_do_not_come_back_from_the_reserve(tmp_path):
    path, copy = str(tmp_path / "j"), str(tmp_path / "crash")
    j = J.DurableJournal(path)
    for i in range(1, 21):
        j.add(f"cmd{i}".encode(), i, 1)
    j.sync()
    j.add(b"new16", 16, 2)  # a conflicting entry: 16..20 are cut, new16 appended
    _crash_image(j, path, copy)
    k = J.DurableJournal(copy)
    assert indexes(k) == list(range(1, 17)) and k[-1] == (b"new16", 16, 2)
    j._destroy()


class _PidSnapshotReplica(VaultReplica):
    """Records which process wrote each snapshot."""

    def _write_snapshot(self, filename, raft_data):
        with open(self.snapshot_path + ".writer", "w") as f:
            f.write(str(os.getpid()))
        return super()._write_snapshot(filename, raft_data)


@pytest.mark.parametrize("fork", [True, False])
def test_snapshots_are_written_by_a_forked_child(tmp_path, fork):
    """pysyncobj turns useFork off when a custom serializer is given; the
    replica turns it back on, so the Raft thread does not serialise."""
    addr = f"127.0.0.1:{free_base_port(1)}"
    tls = fleet_tls(tmp_path / "pki", [addr])[addr]
    rep = _PidSnapshotReplica(addr, [], str(tmp_path / "n1"),
                              settings=RaftSettings(fork_snapshots=fork), tls=tls)
    try:
        wait_until(lambda: rep.status().get("role") == "leader", 20, what="a leader")
        done, errors = threading.Semaphore(0), []

        def finished(res, err) -> None:
            if err:
                errors.append(err)
            done.release()
        for k in range(20):
            rep.propose(encode_command("enroll", user=f"u{k}".encode(), now=k, max_attempts=3,
                                       version=b"v" * 16, opaque_record=b"r" * 192,
                                       sealed_secret=b"s" * 40, **_ticket()),
                        finished)
        for _ in range(20):
            assert done.acquire(timeout=10)
        assert errors == []
        before = rep.status()["log_start"]
        rep.compact_now()
        wait_until(lambda: rep.status()["log_start"] > before, 20, what="a compaction")
        with open(rep.snapshot_path + ".writer") as f:
            writer = int(f.read())
        assert (writer != os.getpid()) == fork
        assert rep.read_state(lambda v: len(v.records)) == 20
    finally:
        rep.destroy_synchronous()
    # the snapshot the child wrote is the one a restart loads
    again = VaultReplica(addr, [], str(tmp_path / "n1"),
                         settings=RaftSettings(fork_snapshots=fork), tls=tls)
    try:
        wait_until(lambda: again.read_state(lambda v: len(v.records)) == 20, 20,
                   what="the state restored")
    finally:
        again.destroy_synchronous()


def _enroll_all(rep, users):
    done, errors = threading.Semaphore(0), []

    def finished(res, err) -> None:
        if err:
            errors.append(err)
        done.release()
    for u in users:
        rep.propose(encode_command("enroll", user=u.encode(), now=1, max_attempts=3,
                                   version=b"v" * 16, opaque_record=b"r" * 192,
                                   sealed_secret=b"s" * 40, **_ticket()),
                    finished)
    for _ in users:
        assert done.acquire(timeout=10)
    assert errors == []


def _wait_leader(rep):
    wait_until(lambda: not (rep.status().get("role") != "leader"), 20, what="no leader")


def test_compaction_deletes_segments_and_a_restart_keeps_every_entry(tmp_path):
    """With a segmented journal, compaction deletes old segment files (on a
    helper thread) and leaves the rest on disk as it is; a restart loads the
    snapshot, drops the entries it covers and replays the others."""
    settings = RaftSettings(fork_snapshots=False, segment_bytes=4096)
    addr = f"127.0.0.1:{free_base_port(1)}"
    data = str(tmp_path / "n1")
    tls = fleet_tls(tmp_path / "pki", [addr])[addr]
    rep = VaultReplica(addr, [], data, settings=settings, tls=tls)
    try:
        _wait_leader(rep)
        _enroll_all(rep, [f"u{k}" for k in range(60)])
        journal = os.path.join(data, "raft.journal")
        before_files = SG.list_segments(journal)
        assert len(before_files) >= 4
        rep.compact_now()
        wait_until(lambda: SG.list_segments(journal)[0] != before_files[0], 20,
                   what="a segment deleted")
        _enroll_all(rep, [f"v{k}" for k in range(10)])  # entries after the snapshot
    finally:
        rep.destroy_synchronous()
    again = VaultReplica(addr, [], data, settings=settings, tls=tls)
    try:
        wait_until(lambda: again.read_state(lambda v: len(v.records)) == 70, 20,
                   what="the state restored")
        _wait_leader(again)
        _enroll_all(again, ["w0"])
        assert again.read_state(lambda v: len(v.records)) == 71
    finally:
        again.destroy_synchronous()


def test_an_orphaned_snapshot_child_writes_nothing(tmp_path):
    """A snapshot child whose node is gone must not rename a stale snapshot
    over the one a restarted node uses: it dies with the node (PDEATHSIG), and
    if the node died before it could ask, it exits without writing."""
    addr = f"127.0.0.1:{free_base_port(1)}"
    tls = fleet_tls(tmp_path / "pki", [addr])[addr]
    rep = VaultReplica(addr, [], str(tmp_path / "n1"), tls=tls)
    try:
        target = str(tmp_path / "snap.out")
        entries: tuple[tuple[bytes, int, int], tuple[bytes, int, int], list[str]] = (
            (b"\x01", 2, 1), (b"\x01", 1, 1), [])
        # the child's parent is not the node any more: exit, write nothing
        pid = os.fork()
        if pid == 0:
            rep._pid = -1  # "the node" is some other process
            try:
                rep._write_snapshot(target, entries)
            finally:
                os._exit(0)  # reached only if the guard failed
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 1 and not os.path.exists(target)
        # control: with its node alive, the child writes the snapshot
        pid = os.fork()
        if pid == 0:
            try:
                rep._write_snapshot(target, entries)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and os.path.exists(target)
    finally:
        rep.destroy_synchronous()


def test_a_snapshot_child_dies_with_its_node(tmp_path):
    import subprocess
    import sys
    script = (
        "import os, sys, time\n"
        "from vault_raft.raft import snapshots as raft\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    raft._die_with_parent()\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
        "time.sleep(0.5)\n"
        "os.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, cwd=os.path.dirname(os.path.dirname(__file__)))
    child = int(out.stdout.split()[0])

    def gone():
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # killed, not yet reaped
        except FileNotFoundError:
            return True

    wait_until(gone, 10, what="the snapshot child to die with its node")


def test_a_failed_spare_segment_is_made_at_the_roll(tmp_path, monkeypatch):
    _small_segments(monkeypatch, size=4096)
    path = str(tmp_path / "j")
    j = J.DurableJournal(path)
    real = J.DurableJournal._create_segment
    calls = []

    def flaky(self, seq):
        calls.append(seq)
        if len(calls) == 1:  # the helper thread's attempt: disk trouble
            raise OSError(28, "No space left on device")
        return real(self, seq)
    monkeypatch.setattr(J.DurableJournal, "_create_segment", flaky)
    i = 0
    while len(j.segments) == 1:
        i += 1
        j.add(f"command-{i:04d}".encode(), i, 1)
    assert calls[:2] == [1, 1] and j.segments[1] == SG.segment_path(path, 1)
    j._destroy()
    assert indexes(J.DurableJournal(path)) == list(range(1, i + 1))
