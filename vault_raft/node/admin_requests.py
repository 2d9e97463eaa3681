"""The operator's requests to a node: its status (``GET /v1/status``, and
the detailed one) and the signed admin operations (``POST /v1/admin``:
status, compact, member, transfer)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

from vault_raft.node import membership as membership_admin
from vault_raft.node.admin import AdminAuthError
from vault_raft.node.bridge import raft_call
from vault_raft.node.validate import ApiError, now_ms
from vault_raft.raft import _pysyncobj as pso
from vault_raft.raft.replica import FAIL_NAMES


class VaultService(Protocol):
    """What these requests read of :class:`vault_raft.node.vault_service.VaultService`."""
    cfg: Any
    ks: Any
    replica: Any
    peer_ids: dict
    stats: dict
    nofile: dict | None
    http: Any
    admin_auth: Any


def status(service: VaultService, detail: bool = False) -> dict:
    """Health for anyone; with ``detail`` (admin only) record counts,
    journal and request statistics as well."""
    st = service.replica.status()
    leader = st.get("leader")
    out = {
        "node_id": service.cfg.node_id,
        "fleet_id": service.ks.fleet_id,
        "role": st.get("role"),
        "term": st.get("term"),
        "commit_index": st.get("commit_index"),
        "last_applied": st.get("last_applied"),
        "leader": membership_admin.node_name(service.replica, leader, service.peer_ids)
        if leader else None,
        "healthy": service.replica.can_serve(),
    }
    if detail:
        out.update(records=st.get("records"), journal_syncs=st.get("journal_syncs"),
                   synced_index=st.get("synced_index"), log_len=st.get("log_len"),
                   log_start=st.get("log_start"),
                   transport=service.cfg.transport, stats=dict(service.stats))
        if service.nofile is not None:
            out["open_files"] = dict(service.nofile, in_use=_open_files())
        if service.http is not None:
            out["api"] = dict(service.http.stats(), limits=service.http.limits.to_dict())
        out["members"] = membership_admin.members(service.replica)
        transport = pso.transport(service.replica)
        if hasattr(transport, "stats"):  # the mTLS transport
            out["raft_port"] = transport.stats()
    return out


async def admin(service: VaultService, body: dict) -> dict:
    """``POST /v1/admin``: status, compact, member or transfer, once its
    signature (fleet admin key) verified."""
    try:
        op, args = service.admin_auth.verify(body, now_ms())
    except AdminAuthError as exc:
        raise ApiError(401, str(exc)) from None
    if op == "status":
        return status(service, detail=True)
    if op == "compact":
        service.replica.compact_now()
        return {"compacting": True}
    if op == "member":
        return await membership_admin.change(service.replica, service.cfg.raft_addr, args)
    return await transfer(service, args.get("to"))


async def transfer(service: VaultService, to: Any) -> dict:
    """Hand leadership to ``to`` (a node id) or, if None, the best follower."""
    by_id = {nid: addr for addr, nid in service.cfg.peer_ids}
    by_id.update({m["node"]: m["addr"] for m in membership_admin.members(service.replica)
                  if m["node"]})
    if to is not None and (not isinstance(to, str) or to not in by_id
                           or to == service.cfg.node_id):
        raise ApiError(400, "to must be the id of another node of this fleet: "
                            f"{sorted(n for n in by_id if n != service.cfg.node_id)}")
    before = service.replica.status().get("leader")
    target = by_id[to] if to is not None else None
    try:
        err = await raft_call(lambda done: service.replica.transfer_leadership(target, done),
                              5.0)
    except TimeoutError:
        raise ApiError(503, "the Raft thread did not take the transfer request within 5 s")\
            from None
    if err not in (0, None):
        raise ApiError(409, f"transfer refused: {FAIL_NAMES.get(err, err)} (this node must "
                            "lead, and the target must be connected and caught up)")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        leader = service.replica.status().get("leader")
        if leader and leader != before:
            return {"transferred": True, "leader": service.peer_ids.get(leader, leader)}
        await asyncio.sleep(0.05)
    return {"transferred": False, "leader": service.peer_ids.get(before, before)}


def _open_files() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
