"""Every touch of pysyncobj's internals, in one place.

The replica reaches into pysyncobj 0.3.17 through private names: name-mangled
attributes of ``SyncObj`` (``_SyncObj__raftState``, ...), module functions it
replaces (``createJournal``, ``atomicReplace``) and protected methods it
overrides.  An upstream rename would not fail loudly on its own: a read
raises ``AttributeError`` deep in the Raft thread, and a *write* silently
creates a new attribute that pysyncobj never reads.  So:

* no other module names a pysyncobj private attribute (``tests/
  test_pysyncobj_fence.py`` greps for ``_SyncObj__``); they call the helpers
  below;
* :data:`INVENTORY` lists each hooked, read or written name and what for;
* :func:`self_check` runs at import and raises :class:`PysyncobjMismatch`,
  naming every missing name, if the installed pysyncobj lacks one (methods and
  class attributes by lookup; instance attributes by scanning the class's code
  for the attribute stores that create them);
* every write goes through :func:`_set`, which refuses to create an attribute.

Upgrading pysyncobj: bump the pin and :data:`SUPPORTED_VERSION`, run the
fence test, then read the upstream diff of each method named in the
inventory (the replica depends on what they do, not only on their names).
"""

from __future__ import annotations

import dis
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pysyncobj.fast_queue as _fq
import pysyncobj.pipe_notifier as _pn
import pysyncobj.serializer as _ser
import pysyncobj.syncobj as _so
import pysyncobj.transport as _tr
from pysyncobj.version import VERSION

from vault_raft.errors import VaultRaftError

SUPPORTED_VERSION = "0.3.17"

_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER
ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class PysyncobjMismatch(VaultRaftError, ImportError):
    """The installed pysyncobj is not the one the replica's hooks were written for."""


@dataclass(frozen=True)
class Hook:
    owner: str  # where the name lives (see _OWNERS)
    name: str
    use: str  # read / write / wrap / patch / override / call / log
    why: str


#: Each name of pysyncobj's internals that vault_raft reads, writes, wraps or
#: overrides.  ``owner``: a module, a class (attribute lookup), or ``X()``: an
#: attribute an ``X`` instance gets in its methods.
INVENTORY: tuple[Hook, ...] = (
    # --- module functions replaced process-wide (install_hooks)
    Hook("pysyncobj.syncobj", "createJournal", "patch",
         "hand pysyncobj the durable journal for a DurablePath"),
    Hook("pysyncobj.serializer", "atomicReplace", "patch",
         "sync a snapshot before and its directory after the rename"),
    Hook("pysyncobj.syncobj", "monotonicTime", "patch/read",
         "the Raft clock (the simulation replaces it with a virtual one)"),
    Hook("pysyncobj.syncobj", "random", "patch",
         "election jitter (the simulation seeds it)"),
    Hook("SyncObj", "truncating already-applied", "log",
         "a CRITICAL line the Raft-conformant journal makes a false alarm: filtered"),
    # --- SyncObj methods the replica wraps per instance (wrap)
    Hook("SyncObj", "_SyncObj__sendAppendEntries", "wrap",
         "group commit: one append round per drained command queue"),
    Hook("SyncObj", "_SyncObj__onMessageReceived", "wrap",
         "pre-vote, vote dedupe, leader contact (via the transport's callback)"),
    Hook("SyncObj", "_SyncObj__loadDumpFile", "wrap",
         "InstallSnapshot keeps a log that covers the snapshot"),
    Hook("SyncObj", "_SyncObj__applyLogEntries", "wrap",
         "lazy commit notices"),
    Hook("SyncObj", "_SyncObj__parseChangeClusterRequest", "wrap",
         "membership entries parsed without unrestricted unpickling"),
    Hook("SyncObj", "_SyncObj__changeCluster", "wrap",
         "membership: note that the leader proposes a change"),
    Hook("SyncObj", "_SyncObj__doChangeCluster", "wrap",
         "membership: pins and revocations follow each applied change"),
    Hook("SyncObj", "_SyncObj__generateRaftTimeout", "call",
         "a fresh election deadline (pre-vote, recovery)"),
    Hook("SyncObj", "_SyncObj__onLeaderChanged", "call",
         "announce a lost leader when the pre-vote timer fires"),
    # --- SyncObj protected methods overridden or called by subclasses
    Hook("SyncObj", "_onTick", "override",
         "sync the journal, gate elections, run queued admin calls"),
    Hook("SyncObj", "_checkCommandsToApply", "override",
         "defer per-command append rounds while draining the queue"),
    Hook("SyncObj", "_getLeader", "call", "health: is a leader known"),
    Hook("SyncObj", "_isLeader", "call", "the simulation's leader checks"),
    Hook("SyncObj", "_applyCommand", "call", "propose a membership change"),
    # --- SyncObj instance state
    Hook("SyncObj()", "_SyncObj__raftState", "read", "role (2: leader)"),
    Hook("SyncObj()", "_SyncObj__raftCurrentTerm", "read", "pre-vote term"),
    Hook("SyncObj()", "_SyncObj__raftLog", "read", "last log position (votes)"),
    Hook("SyncObj()", "_SyncObj__selfNode", "read",
         "no elections for a read-only node; the member list"),
    Hook("SyncObj()", "_SyncObj__raftElectionDeadline", "read/write",
         "hold or trigger an election (pre-vote, recovery)"),
    Hook("SyncObj()", "_SyncObj__transferInProgress", "read",
         "leadership transfers skip the pre-vote"),
    Hook("SyncObj()", "_SyncObj__otherNodes", "read",
         "pre-vote peers and majority; the member list"),
    Hook("SyncObj()", "_SyncObj__raftLeader", "read/write",
         "forget the leader when the election timer fires"),
    Hook("SyncObj()", "_SyncObj__transport", "read",
         "send pre-vote messages; the mTLS transport's counters"),
    Hook("SyncObj()", "_SyncObj__raftLastApplied", "read",
         "the journal refuses to cut applied entries"),
    Hook("SyncObj()", "_SyncObj__commandsQueue", "read", "are commands queued"),
    Hook("SyncObj()", "_SyncObj__serializer", "read", "to turn useFork back on"),
    Hook("SyncObj()", "_SyncObj__pipeNotifier", "read",
         "the simulation closes its pipe when a node is dropped"),
    Hook("SyncObj()", "_poller", "read", "the mTLS transport runs on pysyncobj's poller"),
    Hook("Serializer()", "_Serializer__useFork", "write",
         "forked snapshots with a custom serializer"),
    Hook("FastQueue()", "_FastQueue__queue", "read", "are commands queued"),
    Hook("PipeNotifier()", "_PipeNotifier__pipeR", "read", "closed by the simulation"),
    Hook("PipeNotifier()", "_PipeNotifier__pipeW", "read", "closed by the simulation"),
    # --- Transport base class used by MtlsTransport and the simulation's transport
    Hook("Transport", "_onMessageReceived", "call", "deliver a received message"),
    Hook("Transport", "_onNodeConnected", "call", "report a peer connection"),
    Hook("Transport", "_onNodeDisconnected", "call", "report a lost peer connection"),
    Hook("Transport", "setOnMessageReceivedCallback", "call", "route messages to the replica"),
)


def _owners() -> dict[str, object]:
    """Owner name -> what to look names up in (resolved at each check)."""
    return {"pysyncobj.syncobj": _so, "pysyncobj.serializer": _ser,
            "SyncObj": _so.SyncObj, "Transport": _tr.Transport,
            "SyncObj()": _so.SyncObj, "Serializer()": _ser.Serializer,
            "FastQueue()": _fq.FastQueue, "PipeNotifier()": _pn.PipeNotifier}


def _functions(cls) -> list:
    return [f.__code__ for f in vars(cls).values() if hasattr(f, "__code__")]


def _stored_attrs(cls) -> set[str]:
    """Attribute names the class's methods assign (``self.x = ...``): the
    instance attributes it creates (mangled names appear mangled)."""
    return {ins.argval for code in _functions(cls) for ins in dis.get_instructions(code)
            if ins.opname == "STORE_ATTR"}


def _string_constants(cls) -> list[str]:
    return [c for code in _functions(cls) for c in code.co_consts if isinstance(c, str)]


def missing_hooks() -> list[str]:
    """``owner.name`` of every inventory entry the installed pysyncobj lacks."""
    owners = _owners()
    stores: dict[str, set[str]] = {}
    missing = []
    for hook in INVENTORY:
        target = owners[hook.owner]
        if hook.use == "log":
            found = any(c.startswith(hook.name) for c in _string_constants(target))
        elif hook.owner.endswith("()"):
            if hook.owner not in stores:
                stores[hook.owner] = _stored_attrs(target)
            found = hook.name in stores[hook.owner]
        else:
            found = hasattr(target, hook.name)
        if not found:
            missing.append(f"{hook.owner}.{hook.name}")
    return missing


def self_check() -> None:
    """Raise :class:`PysyncobjMismatch` unless the installed pysyncobj is the
    supported version and has every name in :data:`INVENTORY`."""
    problems = []
    if VERSION != SUPPORTED_VERSION:
        problems.append(f"vault_raft needs pysyncobj {SUPPORTED_VERSION}, found {VERSION}")
    missing = missing_hooks()
    if missing:
        problems.append("pysyncobj lacks names vault_raft hooks: " + ", ".join(missing))
    if problems:
        raise PysyncobjMismatch("; ".join(problems) + " (see vault_raft/raft/_pysyncobj.py)")


def _set(obj, name: str, value) -> None:
    """Write an attribute that must already exist (an upstream rename must
    fail here, not create an attribute pysyncobj never reads)."""
    if not hasattr(obj, name):
        raise PysyncobjMismatch(f"{type(obj).__name__} has no attribute {name!r} to set: "
                                "pysyncobj changed (see vault_raft/raft/_pysyncobj.py)")
    setattr(obj, name, value)


# ------------------------------------------------------- process-wide hooks

def install_hooks(create_journal: Callable, durable_replace: Callable[[str, str], None],
                  quiet_truncation_alarm: Callable[[], bool]) -> None:
    """Replace pysyncobj's journal factory (``create_journal(path)`` returns a
    journal, or None for pysyncobj's own), its snapshot rename, and filter its
    "truncating already-applied" alarm while ``quiet_truncation_alarm()``."""
    original = _so.createJournal

    def _create_journal(journal_file=None):
        journal = create_journal(journal_file)
        return journal if journal is not None else original(journal_file)

    _set(_so, "createJournal", _create_journal)
    _set(_ser, "atomicReplace", durable_replace)

    class _NoFalseTruncationAlarm(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not (quiet_truncation_alarm()
                        and str(record.msg).startswith("truncating already-applied"))

    logging.getLogger(_so.__name__).addFilter(_NoFalseTruncationAlarm())


def now() -> float:
    """pysyncobj's clock (read at each call: the simulation replaces it)."""
    return _so.monotonicTime()


def set_clock(monotonic: Callable[[], float], rng) -> tuple:
    """Replace pysyncobj's clock and election randomness; returns the previous pair."""
    saved = (_so.monotonicTime, _so.random)
    _set(_so, "monotonicTime", monotonic)
    _set(_so, "random", rng)
    return saved


# ---------------------------------------------------------------- reading

def is_leader(obj) -> bool:
    return obj._SyncObj__raftState == _LEADER


def role(obj) -> str:
    """"follower", "candidate" or "leader"."""
    state = obj._SyncObj__raftState
    return ROLES.get(state, str(state))


def current_term(obj) -> int:
    return obj._SyncObj__raftCurrentTerm


def last_log_entry(obj) -> tuple:
    """The last log entry: (command, index, term)."""
    return obj._SyncObj__raftLog[-1]


def self_node(obj):
    """This node (None before pysyncobj has set it up, and on a read-only node)."""
    return getattr(obj, "_SyncObj__selfNode", None)


def has_self_node(obj) -> bool:
    return obj._SyncObj__selfNode is not None


def election_deadline(obj) -> float:
    return obj._SyncObj__raftElectionDeadline


def set_election_deadline(obj, when: float) -> None:
    _set(obj, "_SyncObj__raftElectionDeadline", when)


def election_timeout(obj) -> float:
    """A fresh random election timeout (seconds)."""
    return obj._SyncObj__generateRaftTimeout()


def transfer_in_progress(obj) -> bool:
    return bool(obj._SyncObj__transferInProgress)


def other_nodes(obj) -> list:
    return list(obj._SyncObj__otherNodes)


def leader(obj):
    return obj._SyncObj__raftLeader


def forget_leader(obj) -> None:
    """Drop the known leader and tell pysyncobj's listeners, as when it starts an election."""
    _set(obj, "_SyncObj__raftLeader", None)
    obj._SyncObj__onLeaderChanged()


def transport(obj):
    """The replica's transport (None for an object that is no replica)."""
    return getattr(obj, "_SyncObj__transport", None)


def last_applied(obj) -> int:
    return obj._SyncObj__raftLastApplied


def commands_queued(obj) -> bool:
    return bool(obj._SyncObj__commandsQueue._FastQueue__queue)


def pipe_fds(obj) -> list[int]:
    """The notifier pipe's descriptors (none if pysyncobj made no pipe)."""
    pn = getattr(obj, "_SyncObj__pipeNotifier", None)
    fds = (getattr(pn, "_PipeNotifier__pipeR", None), getattr(pn, "_PipeNotifier__pipeW", None))
    return [fd for fd in fds if fd is not None]


def poller(obj):
    return obj._poller


# ---------------------------------------------------------------- hooking

def wrap_method(obj, name: str, replacement: Callable) -> Callable:
    """Make ``replacement`` this instance's ``SyncObj.__<name>`` (pysyncobj
    calls private methods through the instance, so an instance attribute
    wins); returns the original bound method."""
    attr = "_SyncObj__" + name
    original = getattr(obj, attr)
    _set(obj, attr, replacement)
    return original


def intercept_messages(obj, handler: Callable) -> Callable:
    """Route every received message to ``handler(node, message)``; returns
    pysyncobj's own handler, which ``handler`` calls to pass a message on."""
    original = obj._SyncObj__onMessageReceived
    obj._SyncObj__transport.setOnMessageReceivedCallback(handler)
    return original


def enable_fork_snapshots(obj, on: bool) -> None:
    """pysyncobj turns ``useFork`` off when a custom serializer is given
    (``Serializer.__init__``); its fork path calls the custom serializer in
    the child just as well."""
    _set(obj._SyncObj__serializer, "_Serializer__useFork", on)


self_check()
