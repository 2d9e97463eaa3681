"""Storage errors: damage a node must not start over, and writes that failed."""

from __future__ import annotations


class JournalCorrupt(Exception):
    """The journal, a snapshot or their metadata is damaged beyond a torn tail."""


class StorageFailed(OSError):
    """Writing or syncing the journal failed (disk full, I/O error); raised when
    no ``on_failure`` handler stops the node first."""
