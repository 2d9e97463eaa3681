"""The journal the replica depends on: a :class:`typing.Protocol`.

pysyncobj calls a journal through its own interface (``add``, ``clear``,
``deleteEntriesFrom``, ``deleteEntriesTo``, the term/vote and commit index
getters and setters, ``onOneSecondTimer``, ``flush``, ``_destroy``, indexing
and ``len``); the replica also syncs it, reads how far it is synced, and asks
whether it is recovering lost entries.  :class:`~.journal.DurableJournal` is
the one on disk; the deterministic simulation has one in memory.  A journal
may also offer ``on_failure``, ``applied`` and ``on_sync`` hooks, which the
replica and the node set when they are there.
"""

from __future__ import annotations

from typing import Protocol


class Journal(Protocol):
    syncs: int  # how many times sync() made something durable
    #: set while entries this node had made durable are missing:
    #: {"need", "need_term", "reason"}
    recovery: dict | None

    # --- what the replica adds to pysyncobj's interface
    def sync(self) -> None:
        """Make every entry written so far durable."""

    @property
    def synced_index(self) -> int:
        """Index of the last entry known to be on disk."""
        ...

    # --- pysyncobj's Journal interface
    def add(self, command: bytes, idx: int, term: int) -> None: ...

    def clear(self) -> None: ...

    def deleteEntriesFrom(self, entryFrom: int) -> None: ...

    def deleteEntriesTo(self, entryTo: int) -> None: ...

    def __getitem__(self, item): ...

    def __len__(self) -> int: ...

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None: ...

    def getRaftCommitIndex(self) -> int: ...

    def setCurrentTerm(self, term: int, votedForNodeId) -> None: ...

    def getCurrentTerm(self) -> int: ...

    def getVotedForNodeId(self): ...

    def onOneSecondTimer(self) -> None: ...

    def flush(self) -> None: ...

    def _destroy(self) -> None: ...
