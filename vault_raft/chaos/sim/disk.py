"""The simulated disk: what survives a crash, and a journal that loses its
unsynced tail (:class:`SimJournal`, the contract of ``DurableJournal``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vault_raft.storage.durability import assess_loss, raft_add_position, restore_term


@dataclass
class SimDisk:
    """What survives a crash: the log, the term/vote file, the durability mark."""
    entries: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    mark: dict | None = None


class SimJournal:
    """DurableJournal's contract in memory: appends are volatile until ``sync``;
    Raft-conformant truncation like DurableJournal."""

    RAFT_CONFORMANT_TRUNCATION = True
    #: False: ignore the durability mark, taking a damaged log as it is
    #: (``vault-raft simulate --no-durability-mark`` shows what the mark fixes)
    USE_DURABILITY_MARK = True

    def __init__(self, path: str, trace=None, disk: SimDisk | None = None,
                 snapshot_last=None, truncate_after=None, durability_mark=True):
        self.disk = disk if disk is not None else SimDisk()
        self.trace = trace
        self._entries = list(self.disk.entries)
        self._meta = dict(self.disk.meta)
        self._dirty = False
        self.syncs = 0
        self._synced_idx = self._entries[-1][1] if self._entries else 0
        self.recovery: dict | None = None
        self._recover(snapshot_last)

    def _recover(self, snapshot_last) -> None:
        """DurableJournal's rules on open (the same functions decide)."""
        mark = self.disk.mark if self.USE_DURABILITY_MARK else None
        first = self._entries[0][1:] if self._entries else None
        last = self._entries[-1][1:] if self._entries else None
        loss = assess_loss(first, last, snapshot_last, mark)
        if loss is not None:
            self.recovery = {"need": loss["need"], "need_term": loss["need_term"],
                             "reason": "simulated damage"}
            if loss["gap"]:
                self._entries = []
                self.disk.entries = []
                self._synced_idx = 0
        last_term = max([e[2] for e in self._entries[-1:]]
                        + [snapshot_last[1] if snapshot_last else 0])
        new = restore_term(self._meta if "term" in self._meta else None, mark, last_term)
        if new is not None:
            self._meta.update(new)
            self.disk.meta = dict(self._meta)
        self._store_mark()

    def _store_mark(self) -> None:
        last = self._entries[-1] if self._entries else None
        high = (last[1], last[2]) if last is not None and last[1] == self._synced_idx else (0, 0)
        if self.recovery is not None:
            high = max(high, (self.recovery["need"], self.recovery["need_term"]))
        self.disk.mark = {"high": high[0], "high_term": high[1],
                          "term": self._meta.get("term", 0), "vote": self._meta.get("vote")}

    def add(self, command, idx, term):
        if self.RAFT_CONFORMANT_TRUNCATION:
            action, pos = raft_add_position(self._entries, idx, term)
            if action == "skip":
                return
            if action == "cut":
                del self._entries[pos:]
        self._entries.append((command, idx, term))
        self._dirty = True

    def sync(self):
        if self._dirty:
            self.disk.entries = list(self._entries)
            self._dirty = False
            self.syncs += 1
            self._synced_idx = self._entries[-1][1] if self._entries else 0
            if self.recovery is not None and self._synced_idx >= self.recovery["need"]:
                self.recovery = None
            self._store_mark()

    @property
    def synced_index(self):
        return self._synced_idx

    def clear(self):
        self._entries = []
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom):
        if self.RAFT_CONFORMANT_TRUNCATION:
            return
        del self._entries[entryFrom:]
        self._dirty = True

    def deleteEntriesTo(self, entryTo):  # compaction rewrites the journal durably
        if entryTo >= len(self._entries):
            return  # never compact to an empty log (as DurableJournal)
        self._entries = self._entries[entryTo:]
        self.disk.entries = list(self._entries)
        self._dirty = False

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self):
        return len(self._entries)

    def _destroy(self):
        self.sync()

    def flush(self):
        self.sync()

    def setRaftCommitIndex(self, idx):
        self._meta["commit"] = idx

    def getRaftCommitIndex(self):
        return self._meta.get("commit", 1)

    def setCurrentTerm(self, term, voted):
        self._meta["term"], self._meta["vote"] = term, voted
        self.disk.meta = dict(self._meta)  # synchronous, as in DurableJournal
        self._store_mark()

    def getCurrentTerm(self):
        return self._meta.get("term", 0)

    def getVotedForNodeId(self):
        return self._meta.get("vote")

    def onOneSecondTimer(self):
        self.disk.meta = dict(self.disk.meta, commit=self._meta.get("commit", 1))

    def entry(self, idx: int):
        if not self._entries or idx < self._entries[0][1] or idx > self._entries[-1][1]:
            return None
        return self._entries[idx - self._entries[0][1]]
