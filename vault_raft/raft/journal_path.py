"""How the replica hands pysyncobj its journal, and the process-wide hooks.

pysyncobj makes its journal with ``pysyncobj.syncobj.createJournal(path)``.
The replica passes a :class:`DurablePath` (a ``str`` that carries the
journal's options); the hook installed here returns a
:class:`~vault_raft.storage.journal.DurableJournal` for it (or, in the
simulation, the journal the path's ``factory`` makes) and keeps it on the
path, where the replica finds it.  Importing this module installs the hooks
(:func:`vault_raft.raft._pysyncobj.install_hooks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vault_raft.raft import _pysyncobj as pso
from vault_raft.storage.files import durable_replace
from vault_raft.storage.journal import DurableJournal
from vault_raft.storage.protocol import Journal


class DurablePath(str):
    """A journal path that asks for a :class:`DurableJournal` (or, in the
    deterministic simulation, for the journal ``factory`` returns).  The
    replica depends on the :class:`~vault_raft.storage.protocol.Journal` it gets."""

    journal: Journal | None = None
    trace: Callable | None = None
    factory: Callable[..., Journal] | None = None
    segment_bytes: int | None = None
    snapshot_last: tuple | None = None  # (index, term) the node's snapshot covers
    truncate_after: int | None = None
    durability_mark: bool = True


def _create_journal(journal_file=None):
    """The journal for a :class:`DurablePath`; None: pysyncobj's own."""
    if isinstance(journal_file, DurablePath):
        kw: dict[str, Any] = dict(snapshot_last=journal_file.snapshot_last,
                                  truncate_after=journal_file.truncate_after,
                                  durability_mark=journal_file.durability_mark)
        if journal_file.factory is not None:
            journal_file.journal = journal_file.factory(str(journal_file),
                                                        trace=journal_file.trace, **kw)
        else:
            journal_file.journal = DurableJournal(
                str(journal_file), trace=journal_file.trace,
                segment_bytes=journal_file.segment_bytes, **kw)
        return journal_file.journal
    return None


# pysyncobj logs CRITICAL "truncating already-applied log entries" whenever an
# old or duplicated append reaches a follower, and then asks the journal to
# truncate -- which the Raft-conformant journal ignores (it cuts only on a term
# conflict, and stops the node itself if that would cut an applied entry).  The
# line is a false alarm here; it is kept out of the node log.  pysyncobj's
# serializer renames a snapshot into place (one it wrote, or one a leader sent)
# without syncing it: durable_replace syncs the file before the rename and the
# directory after, in every path.
pso.install_hooks(_create_journal, durable_replace,
                  quiet_truncation_alarm=lambda: DurableJournal.RAFT_CONFORMANT_TRUNCATION)
