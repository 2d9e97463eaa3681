"""Crash-stop and restart of a node process whose disk failed.

When the journal cannot write or sync (disk full, I/O error), the node must
stop acknowledging at once, and it must not trust what it wrote after its
last good sync: after a failed ``fdatasync`` the page cache may still hold
data that never reaches the disk (PostgreSQL's "fsyncgate"), and reading it
back would make the node acknowledge entries it does not have.  So the node
process replaces itself (``exec``, same PID, same command line) with a fresh
one that is told the last synced index: the new process waits until the
disk takes writes again, drops every entry after that index, and starts
through the journal's usual recovery (the durability mark; see
:mod:`vault_raft.storage.journal`).  A leader that does this stops
heartbeating at once, so the others elect a new leader within an election
timeout.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from vault_raft.raft import replica as raft

log = logging.getLogger("vault_raft.restart")

ENV = "VAULT_RAFT_AFTER_STORAGE_FAILURE"
#: The free space the disk must take (written, synced, deleted) before a node
#: that stopped on a storage failure starts again: a journal segment's reserve
#: and some room for the term/vote and mark files.
PROBE_BYTES = 5 * 1024 * 1024


def _reexec(exc: OSError, synced_index: int) -> None:
    log.critical("storage failure (%s): stopping this node; it restarts itself once the disk "
                 "takes writes again, keeping only entries up to %d (the last good sync)",
                 exc, synced_index)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    env = dict(os.environ, **{ENV: str(int(synced_index))})
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        os._exit(75)


def disk_takes_writes(directory: str, size: int = PROBE_BYTES) -> OSError | None:
    """Write, sync and delete ``size`` bytes in ``directory``; the error, if any."""
    path = os.path.join(directory, ".write-probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            chunk = b"\0" * 65536
            for _ in range(size // len(chunk)):
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)
        return None
    except OSError as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        return exc


def prepare(data_dir: str, poll: float = 1.0, while_waiting=None) -> int | None:
    """At node start: install the restart-on-failure hook, and if this process
    replaced one that stopped on a storage failure, wait until ``data_dir``
    takes writes again (logging once) and return the index after which the
    journal must drop entries (None on a normal start).

    ``while_waiting(reason)``, if given, is a context manager that runs while
    this waits (the node serves its status, saying why, and 503 otherwise)."""
    raft.STORAGE_FAILURE_HOOK = _reexec
    value = os.environ.pop(ENV, None)
    if value is None:
        return None
    os.makedirs(data_dir, exist_ok=True)
    err = disk_takes_writes(data_dir)
    if err is not None:
        reason = f"storage failure: {data_dir} does not take writes ({err.strerror or err})"
        log.error("restarted after a storage failure; %s does not take writes (%s): waiting "
                  "(checked every %.0f s)", data_dir, err, poll)
        with while_waiting(reason) if while_waiting else _nothing():
            while err is not None:
                time.sleep(poll)
                err = disk_takes_writes(data_dir)
        log.warning("%s takes writes again: starting", data_dir)
    return int(value)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
