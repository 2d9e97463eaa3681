"""``vault-raft simulate``: replay one seeded schedule of the deterministic simulation."""

from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("simulate", help="run/replay a seeded fault schedule in the deterministic "
                                        "simulation (real replicas, virtual clock, faulty net)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--network", choices=["tcp", "datagram"], default="tcp",
                   help="tcp: FIFO links, loss breaks connections (what pysyncobj runs on); "
                        "datagram: independent loss, duplication and reordering")
    p.add_argument("--upstream-truncation", action="store_true",
                   help="use pysyncobj's own follower truncation (shows the bug our journal fixes)")
    p.add_argument("--upstream-snapshot", action="store_true",
                   help="install a leader's snapshot as pysyncobj does, clearing the log "
                        "(shows the bug the replica fixes)")
    p.add_argument("--no-pre-vote", action="store_true",
                   help="elect as pysyncobj does, without a pre-vote round")
    p.add_argument("--eager-commit-notice", action="store_true",
                   help="after each commit send the followers a round with the new commit index, "
                        "as pysyncobj does (the schedules of seeds found before it was lazy)")
    p.add_argument("--batch-bytes", type=int, default=None,
                   help="the leader's append batch size (default 400): message boundaries, and so "
                        "a schedule's interleaving, depend on it and on the entries' sizes; "
                        "replaying a schedule found with other entry sizes may need another value")
    p.add_argument("--storage-faults", action="store_true",
                   help="storage nemesis: damage a stopped node's disk (cut its log's tail, lose "
                        "its term/vote file, its durability mark or its snapshot), one node at "
                        "a time")
    p.add_argument("--no-durability-mark", action="store_true",
                   help="a journal that ignores its durability mark, taking a damaged log as it "
                        "is (shows the bug the mark fixes)")
    p.add_argument("--verbose", action="store_true", help="print every scheduled action")
    p.set_defaults(fn=run)


def run(a) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":  # pysyncobj iterates sets: pin hashing
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, "-m", "vault_raft", *sys.argv[1:]], env)
    import logging
    logging.disable(logging.CRITICAL)  # pysyncobj's own warnings; the verdicts say what matters
    from vault_raft.chaos import sim as S
    if not 3 <= a.nodes <= 7 or a.steps < 1 or (a.batch_bytes is not None
                                                  and not 64 <= a.batch_bytes <= 1 << 20):
        print("vault-raft simulate: --nodes 3..7, --steps >= 1, --batch-bytes 64..1048576",
              file=sys.stderr)
        return 2
    if a.batch_bytes is not None:
        S.SIM_SETTINGS["batch_bytes"] = a.batch_bytes
    S.SimJournal.RAFT_CONFORMANT_TRUNCATION = not a.upstream_truncation
    from vault_raft.raft.replica import DurableReplica
    from vault_raft.raft.settings import RaftSettings
    DurableReplica.RAFT_CONFORMANT_SNAPSHOT = not a.upstream_snapshot
    RaftSettings.PRE_VOTE = not a.no_pre_vote
    DurableReplica.LAZY_COMMIT_NOTICE = not a.eager_commit_notice
    S.SimJournal.USE_DURABILITY_MARK = not a.no_durability_mark
    verdicts = S.random_run(a.seed, a.nodes, a.steps, mode=a.network,
                            log=print if a.verbose else None, storage=a.storage_faults)
    for v in verdicts:
        print(f"{v.name:16} {v.status.upper():8} {v.detail}")
        for p in v.problems[:10]:
            print(f"{'':25}- {p}")
    return 0 if all(v.ok for v in verdicts) else 1
