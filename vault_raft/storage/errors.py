"""Storage errors: damage a node must not start over, and writes that failed."""

from __future__ import annotations

from vault_raft.errors import VaultRaftError


class JournalCorrupt(VaultRaftError):
    """The journal, a snapshot or their metadata is damaged beyond a torn tail."""


class StorageFailed(VaultRaftError, OSError):
    """Writing or syncing the journal failed (disk full, I/O error); raised when
    no ``on_failure`` handler stops the node first."""
