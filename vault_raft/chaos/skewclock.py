"""Clock jumps for the chaos tier: run a node whose wall clock is offset.

``python -m vault_raft.chaos.skewclock node --dir NODE_DIR`` runs the ordinary
node program after replacing ``time.time``/``time.time_ns`` in that process
with the real clock plus an offset read from ``NODE_DIR/clock-offset`` (seconds,
re-read at most every 50 ms, so the nemesis can step it while the node runs).
Monotonic clocks are untouched, as with an NTP step: pysyncobj's timers run on
``monotonic()``; what a jump can reach is everything that reads the wall
clock -- the ``now`` each node stamps on its commands (attempt expiry, proof
lifetime), token expiry, and the client's request deadlines.

It exists because libfaketime makes ``time.sleep`` fail with EINVAL on these
machines and because the node itself has no clock hook: only the chaos tool
starts nodes through this launcher.
"""

from __future__ import annotations

import os
import sys
import time

from vault_raft.storage.files import atomic_write

OFFSET_FILE = "clock-offset"


def _install(path: str) -> None:
    real_time, real_time_ns, real_mono = time.time, time.time_ns, time.monotonic
    state = {"offset": 0.0, "checked": -1.0}

    def offset() -> float:
        now = real_mono()
        if now - state["checked"] >= 0.05:
            state["checked"] = now
            try:
                with open(path) as f:
                    state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                state["offset"] = 0.0
        return state["offset"]

    time.time = lambda: real_time() + offset()
    time.time_ns = lambda: real_time_ns() + int(offset() * 1e9)


def set_offset(node_dir: str, seconds: float) -> None:
    """Step a running node's wall clock (0 puts it back)."""
    path = os.path.join(node_dir, OFFSET_FILE)
    atomic_write(path, repr(float(seconds)).encode(), mode=0o666)


def main(argv: list[str]) -> int:
    if "--dir" not in argv or argv.index("--dir") + 1 >= len(argv):
        print("usage: python -m vault_raft.chaos.skewclock node --dir NODE_DIR", file=sys.stderr)
        return 2
    node_dir = argv[argv.index("--dir") + 1]
    _install(os.path.join(node_dir, OFFSET_FILE))
    import logging

    from vault_raft.node.main import run_node
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_node(node_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
