"""The API's request checks: :class:`ApiError` (a refusal, answered as the
protocol's error map) and the validators of request body fields.

A request that fails a check here is refused before anything is proposed."""

from __future__ import annotations

import time
from typing import Any

from vault_raft.api import binding as P
from vault_raft.errors import VaultRaftError


class ApiError(VaultRaftError):
    """A refusal: answered ``{"error": code, "message": message, **extra}``
    with ``status`` (``code`` defaults to the status's, protocol.ERRORS).
    ``close``: the connection is closed after the reply."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 close: bool = False, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.code, self.close = status, message, code, close
        self.extra = extra


def now_ms() -> int:
    """This node's wall clock in Unix ms."""
    return int(time.time() * 1000)


def is_integer(v: Any) -> bool:
    """A msgpack integer (never a boolean)."""
    return isinstance(v, int) and not isinstance(v, bool)


def user_id(body: dict) -> bytes:
    """The body's ``user`` (str or bytes) as 1..USER_MAX bytes."""
    u = body.get("user")
    if isinstance(u, str):
        u = u.encode()
    if not isinstance(u, bytes) or not 1 <= len(u) <= P.USER_MAX:
        raise ApiError(400, f"user must be 1..{P.USER_MAX} bytes")
    return u


def binary(body: dict, key: str, lo: int, hi: int | None = None) -> bytes:
    """The body's ``key``: bytes of length ``lo`` (or ``lo..hi``)."""
    v = body.get(key)
    hi = lo if hi is None else hi
    if not isinstance(v, bytes) or not lo <= len(v) <= hi:
        want = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise ApiError(400, f"{key} must be {want} bytes")
    return v
