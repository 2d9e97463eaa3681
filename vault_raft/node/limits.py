"""The API port's limits and the process's open-file budget.

- **Open files.**  :func:`raise_nofile_limit` raises the soft limit on open
  files to the hard limit at start.  The connection cap never exceeds the
  limit minus :data:`FD_RESERVE` (the journal, snapshots, the Raft peers and
  the Raft port's unauthenticated connections keep those).
- **Limits** (:class:`Limits`, node.json ``"limits"``): the connection cap
  and the timeouts that :mod:`vault_raft.node.httpguard` enforces.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, fields
from typing import Any

#: Open files kept out of the API's connection budget (journal segments,
#: snapshots and their writer, Raft peers, the Raft port's unauthenticated
#: connections, the trust file, logs).
FD_RESERVE = 256
MIN_CONNECTIONS = 16


@dataclass(frozen=True)
class Limits:
    """The API port's limits (node.json ``"limits": {...}`` overrides them)."""
    max_connections: int = 1024  # lowered to fit the open-file limit (FD_RESERVE)
    handshake_timeout: float = 5.0  # TCP accept to the end of the TLS handshake
    header_timeout: float = 10.0  # first byte of a request to the end of its headers
    body_timeout: float = 10.0  # end of the headers to the end of the body (then 408)
    idle_timeout: float = 15.0  # no request after the handshake or the last reply
    tls_close_timeout: float = 2.0  # waiting for the client's TLS close_notify
    max_line: int = 4096  # request line, and each header field
    max_headers: int = 32

    @classmethod
    def from_pairs(cls, pairs) -> Limits:
        """From node.json's ``limits`` (key, value) pairs; ValueError if malformed."""
        kinds = {f.name: f.type for f in fields(cls)}
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k not in kinds:
                raise ValueError(f"unknown limit {k!r} (known: {', '.join(sorted(kinds))})")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"limit {k} must be a positive number")
            if kinds[k] in (int, "int"):
                if v != int(v):
                    raise ValueError(f"limit {k} must be an integer")
                v = int(v)
            out[k] = v
        return cls(**out)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def raise_nofile_limit() -> dict:
    """Raise this process's soft limit on open files to its hard limit.
    Returns ``{"soft", "hard", "soft_at_start"}`` (as they are afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    start = soft
    target = hard
    if target == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return {"soft": soft, "hard": hard, "soft_at_start": start}


def connection_cap(limits: Limits, nofile_soft: int) -> int:
    """The API's connection cap under an open-file limit."""
    budget = nofile_soft - FD_RESERVE if nofile_soft != resource.RLIM_INFINITY \
        else limits.max_connections
    return max(MIN_CONNECTIONS, min(limits.max_connections, budget))

