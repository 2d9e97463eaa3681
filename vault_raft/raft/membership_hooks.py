"""The replica's side of membership changes (see :mod:`.membership`).

pysyncobj's dynamic membership is on.  Its entries are parsed with
:func:`membership.parse` (an unpickler that resolves no global and accepts
only a list of five strings),
and each change pysyncobj applies or reverts updates the replica's
:attr:`membership` (node ids, certificate pins and revocations the mTLS
transport checks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft import membership as _members

log = logging.getLogger("vault_raft.replica")


class MembershipHooks:
    """The membership side of :class:`~vault_raft.raft.replica.DurableReplica` (a mixin)."""

    membership: _members.Membership
    _proposing_change: bool
    _pso_change_cluster: Callable
    _pso_do_change_cluster: Callable
    if TYPE_CHECKING:
        def _applyCommand(self, command, callback, *args) -> None: ...  # SyncObj's

    def _install_membership_hooks(self) -> None:
        """Membership entries are read with :func:`membership.parse` (no
        unrestricted unpickling), and each change pysyncobj makes to its
        cluster updates :attr:`membership` (ids, pins, revocations)."""
        pso.wrap_method(self, "parseChangeClusterRequest", self._parse_change)
        self._pso_change_cluster = pso.wrap_method(self, "changeCluster", self._change_cluster)
        self._pso_do_change_cluster = pso.wrap_method(self, "doChangeCluster",
                                                      self._do_change_cluster)

    @staticmethod
    def _parse_change(command: bytes):
        if command[:1] != bytes([_members.MEMBERSHIP]):
            return None
        try:
            c = _members.parse(command)
        except _members.MembershipError as exc:
            log.critical("a membership entry in the log does not parse (%s): ignored", exc)
            return None
        return [c.kind, c.addr, c.addr, c.node_id, c.cert_sha256]

    def _change_cluster(self, request) -> bool:
        # the leader, before appending a proposed change: it is in the log only if True
        self._proposing_change = True
        try:
            return self._pso_change_cluster(request)
        finally:
            self._proposing_change = False

    def _do_change_cluster(self, request, reverse=False) -> bool:
        changed = self._pso_do_change_cluster(request, reverse)
        # appended by a follower, or replayed after a restart: the entry is in
        # the log even where pysyncobj's cluster already had the change (from
        # the config or a snapshot), so its pin or revocation holds
        if changed or not (reverse or self._proposing_change):
            self.membership.apply(_members.Change(request[0], request[1], request[3],
                                                  request[4]), reverse)
        return changed

    def propose_membership(self, change: _members.Change, callback) -> None:
        """Propose a membership change (this node must lead; pysyncobj refuses
        it with REQUEST_DENIED while another change is uncommitted, or when it
        adds a member or removes a non-member or the leader itself).
        ``callback(result, fail_reason)`` runs on the Raft thread once applied."""
        self._applyCommand(_members.entry_bytes(change), callback)

    def members(self) -> list[str]:
        """The Raft addresses of the cluster as this node's log has it."""
        for _ in range(5):
            try:
                return sorted({pso.self_node(self).id,
                               *(n.id for n in pso.other_nodes(self))})
            except RuntimeError:  # changed on the Raft thread meanwhile
                continue
        return []
