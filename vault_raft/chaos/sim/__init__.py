"""Deterministic simulation: the real replicas and the real state machine in one process.

* The **real** :class:`VaultReplica` (pysyncobj 0.3.17 with our durable-journal
  and persist-before-send rules) and the **real** state machine, with
  ``autoTick=False``: the simulator calls ``doTick`` itself.
* A **virtual clock**, with per-node drift: pysyncobj reads time through its
  module global ``monotonicTime``, which the simulator replaces while it runs.
  Its election timeouts come from a seeded ``random.Random``.
* A seeded **in-memory network** (:class:`SimNet`) that can drop, delay,
  duplicate, reorder and partition messages (one-way or both ways).  Every
  message is deep-copied, so no node shares objects with another.
* A **journal that loses its unsynced tail** when a node crashes
  (:class:`SimJournal`, same contract as :class:`DurableJournal`): only what
  ``sync()`` made durable, and term/vote (synchronous), survive.
* Invariants checked after every tick: at most one leader per term (election
  safety), no two nodes ever apply different entries at the same index
  (state machine safety), and no node's log lacks a committed entry it has
  acknowledged (what pysyncobj's upstream follower truncation breaks).  Client operations are
  recorded in a :class:`History` that the chaos checkers judge.

Same seed, same run (within one ``PYTHONHASHSEED``; ``vault-raft simulate``
pins it).

The package's modules: :mod:`~vault_raft.chaos.sim.disk` (the disk and its
journal), :mod:`~vault_raft.chaos.sim.net` (the clock and the network),
:mod:`~vault_raft.chaos.sim.cluster` (the replicas stepped together, the
invariants, the clients' operations) and :mod:`~vault_raft.chaos.sim.workload`
(the clients, the verdicts, the random fault schedule).
"""

from vault_raft.chaos.sim.cluster import SIM_SETTINGS, SafetyViolation, Sim
from vault_raft.chaos.sim.disk import SimDisk, SimJournal
from vault_raft.chaos.sim.net import SimClock, SimNet, make_transport
from vault_raft.chaos.sim.workload import (
    ACTIONS,
    SIM_TICKET_TTL_MS,
    STORAGE_ACTIONS,
    STORAGE_FAULTS,
    SimWorkload,
    random_run,
)

__all__ = ["ACTIONS", "SIM_SETTINGS", "SIM_TICKET_TTL_MS", "STORAGE_ACTIONS", "STORAGE_FAULTS",
           "SafetyViolation", "Sim", "SimClock", "SimDisk", "SimJournal", "SimNet", "SimWorkload",
           "make_transport", "random_run"]
