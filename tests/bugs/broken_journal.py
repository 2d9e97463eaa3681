"""A journal that acknowledges before it syncs (test-only planted bug for the simulation).

``sync()`` reports success but makes nothing durable, so a crash loses entries
the node has already acknowledged -- what pysyncobj's own journal does on a
power loss."""
from vault_raft.chaos.sim import SimJournal


class AckBeforeSyncJournal(SimJournal):
    USE_DURABILITY_MARK = False  # (pysyncobj's journal has none either)

    def _store_mark(self):
        pass

    def sync(self):
        if self._dirty:
            self._dirty = False
            self._synced_idx = self._entries[-1][1] if self._entries else 0


def factory(disk):
    return lambda path, trace=None, **kw: AckBeforeSyncJournal(path, trace, disk, **kw)

