"""Raft timing and behaviour of a replica (``node.json``'s ``raft`` map overrides them)."""

from __future__ import annotations


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
