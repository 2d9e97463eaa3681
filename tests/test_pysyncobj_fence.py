"""The pysyncobj fence: every private name the replica touches is listed in
raft/_pysyncobj.py, checked at import, and reached through that module only."""
import pathlib
import re

import pysyncobj.fast_queue as fq
import pysyncobj.syncobj as so
import pytest

from vault_raft.raft import _pysyncobj as pso

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_pinned_pysyncobj_passes_the_self_check():
    assert pso.missing_hooks() == []
    pso.self_check()
    assert len(pso.INVENTORY) >= 25


def test_a_missing_method_fails_the_check_by_name(monkeypatch):
    monkeypatch.delattr(so.SyncObj, "_SyncObj__sendAppendEntries")
    with pytest.raises(pso.PysyncobjMismatch, match="SyncObj._SyncObj__sendAppendEntries"):
        pso.self_check()


def test_a_missing_instance_attribute_fails_the_check_by_name(monkeypatch):
    """Instance attributes are found in the code that assigns them: a
    FastQueue whose methods store its items under another name fails."""
    def __init__(self, maxSize):
        self.__items = []  # (mangled: _FastQueue__items)
        self.__maxSize = maxSize
    __init__.__qualname__ = "FastQueue.__init__"
    monkeypatch.setattr(fq.FastQueue, "__init__", __init__)
    monkeypatch.setattr(fq.FastQueue, "put_nowait", lambda self, value: None)
    monkeypatch.setattr(fq.FastQueue, "get_nowait", lambda self: None)
    assert pso.missing_hooks() == ["FastQueue()._FastQueue__queue"]
    with pytest.raises(pso.PysyncobjMismatch, match=r"FastQueue\(\)\._FastQueue__queue"):
        pso.self_check()


def test_another_version_fails_the_check(monkeypatch):
    monkeypatch.setattr(pso, "VERSION", "0.3.18")
    with pytest.raises(pso.PysyncobjMismatch, match="needs pysyncobj 0.3.17, found 0.3.18"):
        pso.self_check()


def test_set_refuses_to_create_an_attribute():
    class Obj:
        _SyncObj__raftLeader = "a"

    obj = Obj()
    pso._set(obj, "_SyncObj__raftLeader", None)
    assert obj._SyncObj__raftLeader is None
    with pytest.raises(pso.PysyncobjMismatch, match="_SyncObj__raftLeaderNode"):
        pso._set(obj, "_SyncObj__raftLeaderNode", None)
    assert not hasattr(obj, "_SyncObj__raftLeaderNode")


def test_every_written_name_is_in_the_inventory():
    names = {h.name for h in pso.INVENTORY}
    source = (ROOT / "vault_raft/raft/_pysyncobj.py").read_text()
    used = set(re.findall(r"_(?:SyncObj|Serializer|FastQueue|PipeNotifier)__\w+", source))
    assert used <= names, used - names


def test_no_module_outside_the_fence_names_pysyncobj_private_attributes():
    fence = ROOT / "vault_raft/raft/_pysyncobj.py"
    offenders = []
    for folder in ("vault_raft", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == fence or path == pathlib.Path(__file__).resolve():
                continue
            text = path.read_text(errors="replace")
            if re.search(r"_(SyncObj|Serializer|FastQueue|PipeNotifier)__", text) \
                    or re.search(r"^\s*import pysyncobj\.syncobj", text, re.M):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
