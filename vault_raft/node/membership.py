"""The admin path's membership change: ``POST /v1/admin`` op ``member``.

The operator (``vault-raft fleet replace``) signs a request to the leader
naming one change -- ``{"change": "rem" | "add", "node": "n2", "addr":
"host:port", "cert_sha256": hex}`` -- and the leader proposes it as a Raft
log entry (:mod:`vault_raft.raft.membership`); the reply comes once the entry
is committed and applied here.  One change at a time (pysyncobj refuses a
second while the first is uncommitted).  A removal names the certificate it
revokes; an addition, the certificate the new node must present.  The
checks here make the refusals clear: only the leader proposes, it cannot
remove itself (transfer leadership first), a node id is added only once its
old address was removed.
"""

from __future__ import annotations

import time

from vault_raft.node.bridge import raft_call
from vault_raft.node.validate import ApiError
from vault_raft.raft import membership as MB
from vault_raft.raft.replica import FAIL_NAMES

TIMEOUT = 10.0


def members(replica) -> list[dict]:
    """The cluster as this node's log has it: address and node id of each member."""
    if not hasattr(replica, "membership"):
        return []
    ids = replica.membership.to_dict()["ids"]
    return [{"addr": a, "node": ids.get(a)} for a in replica.members()]


def node_name(replica, addr: str, peer_ids: dict) -> str:
    """The node id of a member address (the membership's, else node.json's)."""
    m = getattr(replica, "membership", None)
    return (m.node_id(addr) if m is not None else None) or peer_ids.get(addr, addr)


async def change(replica, self_addr: str, args: dict) -> dict:
    """Propose ``args`` as a membership change and wait until it is applied here."""
    try:
        c = MB.from_wire([MB.MEMBERSHIP, args.get("change"), args.get("addr"),
                          args.get("node"), args.get("cert_sha256")])
    except MB.MembershipError:
        raise ApiError(400, "a membership change names change (add|rem), node (an id), addr "
                            "(host:port) and cert_sha256 (64 hex digits)") from None
    st = replica.status()
    if st.get("role") != "leader":
        raise ApiError(409, f"this node is not the leader (leader: {st.get('leader')}); send "
                            "membership changes to the leader", reason="not_leader")
    current = members(replica)
    by_addr = {m["addr"]: m["node"] for m in current}
    if c.kind == "rem":
        if c.addr not in by_addr:
            raise ApiError(409, f"{c.addr} is not a member", reason="not_member",
                           members=current)
        if by_addr[c.addr] not in (None, c.node_id):
            raise ApiError(409, f"{c.addr} is {by_addr[c.addr]}, not {c.node_id}",
                           reason="not_member", members=current)
        if c.addr == self_addr:
            raise ApiError(409, "the leader cannot remove itself: transfer leadership first",
                           reason="is_leader")
    else:
        if c.addr in by_addr:
            raise ApiError(409, f"{c.addr} is a member already", reason="member",
                           members=current)
        if any(m["node"] == c.node_id for m in current):
            raise ApiError(409, f"{c.node_id} is a member at another address: remove it "
                                "first (one change at a time)", reason="member",
                           members=current)
    t0 = time.monotonic()
    try:
        err = await raft_call(lambda done: replica.propose_membership(c, done), TIMEOUT)
    except TimeoutError:
        raise ApiError(503, f"the change was not applied within {TIMEOUT:g} s (it may still "
                            "be; check the members before retrying)") from None
    if err != 0:
        name = FAIL_NAMES.get(err, err)
        raise ApiError(409, f"membership change refused: {name} (another change is not yet "
                            "committed, or this node's term has no committed entry yet: "
                            "retry)", reason=str(name))
    return {"changed": True, "change": c.kind, "node": c.node_id, "addr": c.addr,
            "seconds": round(time.monotonic() - t0, 3), "members": members(replica)}
