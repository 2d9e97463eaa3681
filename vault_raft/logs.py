"""Logging helpers shared by every layer."""

from __future__ import annotations

import logging
import threading
import time


class QuietLog:
    """Rate-limited logging by kind: at most ``burst`` lines of one kind per
    ``window`` seconds; the next line of that kind after a quiet spell says
    how many were left out (and :attr:`suppressed` counts them all).
    Thread-safe."""

    def __init__(self, logger: logging.Logger, window: float = 60.0, burst: int = 3,
                 clock=time.monotonic, bursts: dict[str, int] | None = None):
        self.logger, self.window, self.burst, self.clock = logger, window, burst, clock
        self.bursts = dict(bursts or {})  # kind -> its own burst
        self._kinds: dict[str, list] = {}  # kind -> [window start, lines, left out]
        self._lock = threading.Lock()
        self.suppressed = 0

    def log(self, level: int, kind: str, msg: str, *args, exc_info=None) -> bool:
        now = self.clock()
        with self._lock:
            st = self._kinds.get(kind)
            left_out = 0
            if st is None or now - st[0] >= self.window:
                left_out = st[2] if st is not None else 0
                st = self._kinds[kind] = [now, 0, 0]
            if st[1] >= self.bursts.get(kind, self.burst):
                st[2] += 1
                self.suppressed += 1
                return False
            st[1] += 1
        if left_out:
            msg += f" ({left_out} more like this in the previous {self.window:.0f} s not logged)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def debug(self, kind, msg, *args):
        return self.log(logging.DEBUG, kind, msg, *args)

    def info(self, kind, msg, *args):
        return self.log(logging.INFO, kind, msg, *args)

    def warning(self, kind, msg, *args):
        return self.log(logging.WARNING, kind, msg, *args)


class Throttled:
    """One warning at most every ``every`` seconds; the next one logged says
    how many were left out since (``more``, formatted with that count)."""

    def __init__(self, logger: logging.Logger, every: float = 60.0,
                 more: str = " ({} more since)", clock=time.monotonic):
        self.logger, self.every, self.more, self.clock = logger, every, more, clock
        self.last, self.skipped = -1e9, 0

    def warn(self, msg: str, *args) -> None:
        now = self.clock()
        if now - self.last < self.every:
            self.skipped += 1
            return
        more = self.more.format(self.skipped) if self.skipped else ""
        self.logger.warning(msg + more, *args)
        self.last, self.skipped = now, 0
