"""The replica depends on the Journal protocol: both journals provide it."""
import inspect

from vault_raft.chaos.sim import SimJournal
from vault_raft.storage.journal import DurableJournal
from vault_raft.storage.protocol import Journal


def _members():
    names = {n for n, _ in inspect.getmembers(Journal) if not n.startswith("__")
             or n in ("__getitem__", "__len__")}
    names -= {"_is_protocol", "_is_runtime_protocol", "_abc_impl"}
    return names | set(Journal.__annotations__)


def test_the_durable_journal_provides_the_protocol(tmp_path):
    j = DurableJournal(str(tmp_path / "raft.journal"))
    try:
        missing = [n for n in _members() if not hasattr(j, n)]
        assert missing == []
        assert {"sync", "synced_index", "recovery", "add", "deleteEntriesTo"} <= _members()
    finally:
        j._destroy()


def test_the_simulation_journal_provides_the_protocol():
    missing = [n for n in _members() if n not in Journal.__annotations__
               and not hasattr(SimJournal, n)]
    assert missing == []
