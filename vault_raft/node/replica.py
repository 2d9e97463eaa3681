"""The vault's Raft replica: :class:`~vault_raft.core.machine.VaultState` on the durable replica."""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable

from pysyncobj import replicated

from vault_raft.core.machine import VaultState
from vault_raft.raft.replica import DurableReplica


class VaultReplica(DurableReplica):
    """One node's Raft replica of the vault state machine."""

    _checked: tuple[bytes, VaultState] | None

    def __init__(self, *args, **kwargs):
        self._vault = VaultState()
        super().__init__(*args, **kwargs)

    @replicated
    def _vault_apply(self, command: bytes):
        with self._state_lock:
            return self._vault.apply(command)

    def propose(self, command: bytes, callback: Callable[[object, int], None]) -> None:
        """Append ``command``; ``callback(result, fail_reason)`` runs on the
        Raft thread once it is applied here (or failed)."""
        self._vault_apply(command, callback=callback)

    def read_state(self, fn: Callable[[VaultState], object]):
        """Run a read-only function on the applied state (status/tests only)."""
        with self._state_lock:
            return fn(self._vault)

    def _snapshot_state(self) -> bytes:
        return self._vault.snapshot()

    def _check_state(self, blob: bytes) -> None:
        # Parsed once at start-up; pysyncobj loads the same file on its first
        # tick, and then gets this parsed state instead of a second parse.
        self._checked = (hashlib.sha256(blob).digest(), VaultState.from_snapshot(blob))

    def _restore_state(self, blob: bytes) -> None:
        checked, self._checked = getattr(self, "_checked", None), None
        if checked is not None and checked[0] == hashlib.sha256(blob).digest():
            self._vault = checked[1]
        else:
            self._vault = VaultState.from_snapshot(blob)
        # The loaded records are long-lived and acyclic: keep the cyclic GC from
        # walking them (a full collection over 1M records is a pause of its own,
        # and after a snapshot fork it would copy every page the child shares).
        gc.freeze()

    def status(self) -> dict:
        st = super().status()
        st["records"] = self.read_state(lambda v: v.counts())
        return st
