"""A node's metrics in the Prometheus text format (``prometheus-client``).

Served on a port of its own (node.json ``metrics_port``; ``fleet init`` gives
node *i* the port ``base + 200 + i``; ``null`` turns it off), over plain HTTP
on the node's API host: metrics name no user and carry no secret, and a
scraper on the same network reads them without the fleet's client channel.

Counters and histograms are updated where things happen (commits, guesses,
refusals, journal syncs); the Raft state (role, term, commit and applied
index, peers, health, recovery, records, snapshot) is read when scraped.
Names follow the Prometheus conventions (``vault_`` prefix, base units,
``_total`` counters, ``_seconds`` and ``_bytes``).
"""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from vault_raft.raft.snapshots import read_snapshot_stats

log = logging.getLogger("vault_raft.node.metrics")

_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25,
                   0.5, 1.0, 3.0)
_FSYNC_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25)
ROLES = ("follower", "candidate", "leader")


class NodeMetrics:
    """One node's metrics, in a registry of their own."""

    def __init__(self, replica=None, node_id: str = ""):
        self.registry = CollectorRegistry(auto_describe=True)
        self.replica, self.node_id = replica, node_id
        r = self.registry
        self.commits = Counter("vault_commits_total", "Commands proposed, by operation and "
                               "outcome (ok: applied here; unavailable: not committed in time "
                               "or not proposed)", ["op", "outcome"], registry=r)
        self.commit_seconds = Histogram("vault_commit_seconds", "Time from proposal to "
                                        "applied on this node, by operation", ["op"],
                                        buckets=_COMMIT_BUCKETS, registry=r)
        self.guesses = Counter("vault_guesses_total", "Recovery attempts by outcome: counted "
                               "(a KE2 for a record), unknown (a fake KE2), destroyed (the "
                               "limit was used up), unavailable (no answer)", ["outcome"],
                               registry=r)
        self.rejections = Counter("vault_rejections_total", "User requests refused before "
                                  "anything was proposed, by reason", ["reason"], registry=r)
        self.fsync_seconds = Histogram("vault_journal_fsync_seconds", "Journal fdatasync "
                                       "latency (with the durability mark's, in parallel)",
                                       buckets=_FSYNC_BUCKETS, registry=r)
        r.register(_RaftCollector(self))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)


class _RaftCollector:
    """Gauges read from the replica when scraped."""

    def __init__(self, m: NodeMetrics):
        self.m = m

    def describe(self):
        return []

    def collect(self):
        rep = self.m.replica
        if rep is None:
            return
        st = rep.status()
        role = GaugeMetricFamily("vault_raft_role", "1 for the node's current Raft role",
                                 labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1.0 if st.get("role") == name else 0.0)
        yield role
        for name, key, doc in (("vault_raft_term", "term", "Current Raft term"),
                               ("vault_raft_commit_index", "commit_index", "Commit index"),
                               ("vault_raft_applied_index", "last_applied", "Applied index"),
                               ("vault_journal_synced_index", "synced_index",
                                "Last journal entry known durable")):
            yield GaugeMetricFamily(name, doc, value=float(st.get(key) or 0))
        yield GaugeMetricFamily("vault_raft_has_quorum", "1 if this node sees a quorum",
                                value=1.0 if st.get("has_quorum") else 0.0)
        yield GaugeMetricFamily("vault_node_healthy", "1 if this node serves (a leader and a "
                                "quorum in sight, not recovering, applied close to commit)",
                                value=1.0 if rep.can_serve() else 0.0)
        yield GaugeMetricFamily("vault_node_recovering", "1 while the node fetches entries it "
                                "had made durable and lost", value=1.0 if st.get("recovering")
                                else 0.0)
        yield GaugeMetricFamily("vault_raft_peers_connected", "Peers with an open Raft "
                                "connection", value=float(st.get("peers_connected") or 0))
        records = st.get("records") or {}
        rec = GaugeMetricFamily("vault_records", "Records by status", labels=["status"])
        for status, n in sorted(records.items()):
            rec.add_metric([status], float(n))
        yield rec
        snap = getattr(rep, "snapshot_path", None)
        if snap and os.path.exists(snap):
            s = os.stat(snap)
            yield GaugeMetricFamily("vault_snapshot_bytes", "Size of the last snapshot",
                                    value=float(s.st_size))
            yield GaugeMetricFamily("vault_snapshot_age_seconds", "Age of the last snapshot",
                                    value=max(0.0, time.time() - s.st_mtime))
        # A gauge of the last write, not a histogram: the write runs in a forked
        # child that cannot reach this registry (its stats file is read here),
        # and snapshots come minutes apart, so a histogram would hold a handful
        # of observations; an alert compares the last one with a bound.
        stats = read_snapshot_stats(snap) if snap else None
        if stats is not None:
            yield GaugeMetricFamily("vault_snapshot_duration_seconds", "Seconds the last "
                                    "snapshot this node wrote took (serialise, write, sync; "
                                    "in its forked child)",
                                    value=float(stats["duration_seconds"]))
