"""``vault-raft fleet replace --node nK --host H``: replace one node of a
running fleet, one membership change at a time, while it serves.

1. The new node's directory is prepared from the operator's fleet directory
   (:func:`vault_raft.fleet.replace.prepare`: fresh identity key and
   certificate at the new address, the fleet's keys from the offline copy).
2. If the old node leads, leadership moves to another node (a leader cannot
   remove itself); if it runs on this machine, it is stopped.
3. The leader commits ``rem`` for the old address -- revoking the old
   certificate on every node -- and then ``add`` for the new one, pinning its
   certificate (signed admin requests, :mod:`vault_raft.node.membership`).
   Remove first: in a 3-node fleet whose old node is gone, the two survivors
   are a majority of the 2-node configuration and then of the 3-node one, so
   commits never wait for the new node to catch up; adding first would make a
   4-node configuration whose majority (3) needs the new node caught up.
4. The new node directory takes the old one's place and the fleet's files
   name it (:func:`vault_raft.fleet.replace.install`); with ``start`` the
   node is started here (the ``cluster up`` machinery), else the operator
   copies it to its host (``fleet export --node nK``) and starts it there.
5. With an operator directory the bundle and deployment record are
   republished (``fleet publish``), so clients and auditors see the new node.

Each step says what it did through ``progress``; a replacement that stops
half-way can be run again (a removal already committed is not repeated).
"""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Callable

from vault_raft.fleet import replace as R
from vault_raft.fleet.config import ConfigError
from vault_raft.ops.cluster import ClusterError, LocalCluster, wait_until


class Unavailable(ClusterError):
    """No leader with a majority in time (exit 5)."""


def _leader(cl: LocalCluster, timeout: float, ids: list[str]) -> str:
    try:
        return cl.wait_leader(timeout, ids=ids)
    except ClusterError as exc:
        raise Unavailable(f"{exc} (among {', '.join(ids)})") from None


def _hand_over(cl: LocalCluster, node_id: str, timeout: float,
               progress: Callable[[str], None]) -> str | None:
    """Move leadership away from ``node_id``.  A transfer needs a follower that
    is fully caught up, which under load it may not be at that instant: retry
    until ``timeout``.  If it never works and the node runs here, stopping it
    (next step) lets the others elect a leader; a node that runs elsewhere has
    to be stopped by the operator."""
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        try:
            leader = cl.transfer(None, timeout=5.0)
        except ClusterError as exc:
            why = str(exc)
            time.sleep(0.2)
            continue
        if leader != node_id:
            progress(f"leadership moved from {node_id} to {leader}")
            return leader
    if not cl.pid(node_id):
        raise ClusterError(f"{node_id} leads and did not hand leadership over ({why}); stop "
                           "it on its host and run the command again")
    progress(f"{node_id} leads and did not hand leadership over ({why}); stopping it lets "
             "the others elect a leader")
    return None


_NO_ANSWER = (OSError, http.client.HTTPException)  # the request may or may not have arrived


def _members(cl: LocalCluster, nid: str, timeout: float = 30.0) -> list[dict]:
    """The membership ``nid`` has applied (asked again while it does not answer:
    a loaded node may take longer than one request's timeout)."""
    def ask() -> list[dict] | None:
        try:
            code, out = cl.admin(nid, "status")
        except _NO_ANSWER:
            return None
        if code != 200 or "members" not in out:
            raise ClusterError(f"{nid} did not report the membership: {out.get('message')}")
        return out["members"]
    return wait_until(ask, timeout, 0.5, f"{nid} to report the membership")


def _change(cl: LocalCluster, leader: str, rep: R.Replacement, kind: str,
            progress: Callable[[str], None]) -> None:
    addr, fp = (rep.old_addr, rep.old_cert_sha256) if kind == "rem" else \
        (rep.new_addr, rep.new_cert_sha256)
    args = {"change": kind, "node": rep.node_id, "addr": addr, "cert_sha256": fp}
    try:
        code, out = cl.admin(leader, "member", args, timeout=15.0)
        deadline = time.monotonic() + 10.0
        while (code == 409 and out.get("reason") == "REQUEST_DENIED"
               and time.monotonic() < deadline):
            # a new leader takes a change once an entry of its term is applied
            # (or the previous change is): ask again shortly
            time.sleep(0.2)
            code, out = cl.admin(leader, "member", args, timeout=15.0)
    except _NO_ANSWER as exc:
        # The leader may have committed the change and lost only the answer:
        # look at the membership before deciding.
        progress(f"{leader} did not answer the change in time ({exc.__class__.__name__}); "
                 "checking whether it took effect")
        code, out = 200, {"members": _settled(cl, leader, addr, kind == "add")}
    if code != 200:
        raise ClusterError(f"{leader} refused to {'remove' if kind == 'rem' else 'add'} "
                           f"{rep.node_id} at {addr}: {out.get('message')}")
    progress(f"{'removed' if kind == 'rem' else 'added'} {rep.node_id} at {addr} "
             f"({'certificate revoked' if kind == 'rem' else 'certificate pinned'}: "
             f"{fp[:16]}); members: "
             + ", ".join(f"{m['node']}={m['addr']}" for m in out["members"]))


def _settled(cl: LocalCluster, leader: str, addr: str, present: bool) -> list[dict]:
    """The membership once ``addr`` is ``present`` (or not) in it, within 15 s;
    else a clear error: the change did not happen, and running the
    replacement again is safe (each step checks what is already done)."""
    def done() -> list[dict] | None:
        members = _members(cl, leader)
        return members if any(m["addr"] == addr for m in members) == present else None
    try:
        return wait_until(done, 15.0, 0.5, "the membership change")
    except ClusterError:
        raise ClusterError(f"{leader} did not answer, and within 15 s its membership did not "
                           f"show {addr} {'added' if present else 'removed'}: see `vault-raft "
                           "cluster status`, then run the replacement again") from None


def replace_node(fleet_dir: str, node_id: str, host: str, *, raft_port: int | None = None,
                 api_port: int | None = None, bind: str | None = None,
                 operator_dir: str | None = None, start: bool = True, timeout: float = 60.0,
                 progress: Callable[[str], None] = lambda m: None,
                 node_cmd: list[str] | None = None, env: dict | None = None) -> R.Replacement:
    fleet_dir = os.path.abspath(fleet_dir)
    cl = LocalCluster(fleet_dir, node_cmd=node_cmd, env=env)
    if node_id not in cl.ids:
        raise ConfigError(f"no node {node_id!r} in this fleet (nodes: {', '.join(cl.ids)})")
    rep = R.prepare(fleet_dir, node_id, host, raft_port, api_port, bind)
    progress(f"{node_id}: new identity key and certificate for {rep.new_addr} (fleet keys from "
             f"{fleet_dir}); the old certificate is {rep.old_cert_sha256[:16]}")
    others = [n for n in cl.ids if n != node_id]
    leader: str | None = _leader(cl, timeout, cl.ids)
    if leader == node_id:
        leader = _hand_over(cl, node_id, min(timeout, 10.0), progress)
    if cl.pid(node_id):
        cl.stop([node_id])
        progress(f"stopped the old {node_id}")
    leader = _leader(cl, timeout, others)
    if any(m["addr"] == rep.old_addr for m in _members(cl, leader)):
        _change(cl, leader, rep, "rem", progress)
    else:
        progress(f"{node_id} at {rep.old_addr} is not a member (removed before)")
    keep = R.install(fleet_dir, rep)
    progress(f"{node_id}: the new directory is in place (the old one is kept in {keep})")
    cl = LocalCluster(fleet_dir, node_cmd=node_cmd, env=env)  # fleet.json names the new node
    if start:
        cl.start([node_id])
        progress(f"started the new {node_id} at {rep.new_addr}")
    else:
        progress(f"start the new {node_id} on its host: vault-raft fleet export --dir "
                 f"{fleet_dir} --node {node_id} --out DIR, then vault-raft node --dir DIR")
    leader = _leader(cl, timeout, others)
    _change(cl, leader, rep, "add", progress)
    if start:
        target = (cl.status(leader, 2.0) or {}).get("commit_index", 0)

        def caught_up():
            new = cl.status(node_id, 1.0) or {}
            return new.get("healthy") and new.get("last_applied", -1) >= target
        wait_until(caught_up, timeout, 0.2, f"the new {node_id} to catch up")
        progress(f"the new {node_id} is healthy and caught up")
    if operator_dir is not None:
        from vault_raft.fleet.operator import Operator
        op = Operator(operator_dir)
        current, retiring = op.state.get("current"), list(op.state.get("retiring") or [])
        if current == fleet_dir or current is None:
            op.publish(fleet_dir, [r for r in retiring if r != fleet_dir], progress=progress)
        else:  # a retiring fleet: the bundle keeps naming the same fleets
            op.publish(current, retiring, progress=progress)
        progress("bundle and deployment record republished")
    return rep
