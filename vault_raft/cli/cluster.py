"""``vault-raft node``, ``vault-raft cluster up|down|status|transfer`` and
``vault-raft demo``: running the nodes of a fleet on this machine.  Errors
are reported by ``cli.main``."""

from __future__ import annotations

import logging
import sys

from vault_raft.errors import EXIT_UNAVAILABLE
from vault_raft.ops.cluster import ClusterError, LocalCluster


def cmd_node(a) -> int:
    from vault_raft.node.main import run_node
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_node(a.dir)


def cmd_cluster(a) -> int:
    cl = LocalCluster(a.dir)
    if a.action == "up":
        started = cl.start()
        print(f"started {', '.join(started) or 'nothing (all running)'}", file=sys.stderr)
        try:
            leader = cl.wait_leader(a.timeout)
        except ClusterError as exc:
            print(cl.table())
            print(f"error: {exc}; see {cl.dir}/n*/node.log", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"leader: {leader}", file=sys.stderr)
        print(cl.table())
        return 0
    if a.action == "down":
        cl.stop()
        print("stopped", file=sys.stderr)
        return 0
    if a.action == "transfer":
        before = cl.leader()
        print(f"leader: {before} -> {cl.transfer(a.to, a.timeout)}", file=sys.stderr)
        return 0
    print(cl.as_json() if a.json else cl.table())
    return 0 if cl.leader() else EXIT_UNAVAILABLE


def cmd_demo(a) -> int:
    if a.hosts is not None:
        if a.keep:
            print("error: --keep does not combine with --hosts (the hosts are removed at the "
                  "end)", file=sys.stderr)
            return 2
        from vault_raft.ops.demo_hosts import run_hosts_demo
        return run_hosts_demo(a.dir, mode=a.hosts)
    from vault_raft.ops.demo import run_demo
    return run_demo(a.dir, keep=a.keep)


def register(sub) -> None:
    node = sub.add_parser("node", help="run one node in the foreground (SIGTERM stops it)")
    node.add_argument("--dir", required=True, help="the node directory, e.g. FLEET/n1")
    node.set_defaults(fn=cmd_node)

    cl = sub.add_parser("cluster", help="start/stop/inspect every node of a local fleet")
    cl.add_argument("action", choices=["up", "down", "status", "transfer"],
                    help="status and transfer use the signed admin path (FLEET/admin.key)")
    cl.add_argument("--to", default=None, help="transfer: the node to lead (default: the most "
                    "caught-up follower)")
    cl.add_argument("--dir", required=True, help="the fleet directory")
    cl.add_argument("--timeout", type=float, default=30.0)
    cl.add_argument("--json", action="store_true", help="status as JSON")
    cl.set_defaults(fn=cmd_cluster)


def register_demo(sub) -> None:
    dm = sub.add_parser("demo", help="local 3-node cluster: enroll, wrong guesses, recovery")
    dm.add_argument("--dir", default=None, help="fleet directory (default: a temporary one)")
    dm.add_argument("--keep", action="store_true", help="leave the cluster running")
    dm.add_argument("--hosts", nargs="?", const="auto", default=None,
                    choices=["auto", "netns", "loopback"],
                    help="every node on its own host, and one host cut off and back: a "
                    "network namespace each where root and `ip netns` allow (auto, netns), "
                    "else (or with 'loopback') its own address 127.0.0.11-13")
    dm.set_defaults(fn=cmd_demo)
