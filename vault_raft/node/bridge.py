"""The bridge from the asyncio API thread to the Raft thread.

:func:`commit` proposes a command and waits (on the event loop) until this
node applied it; :func:`raft_call` hands a request to the Raft thread and
waits for its callback.  Any failure of a commit (timeout, leader change,
discarded entry) is an ``ApiError(503)``: the command may still be applied
later, never the reverse."""

from __future__ import annotations

import asyncio

from vault_raft.node.validate import ApiError
from vault_raft.raft.replica import FAIL_NAMES

_IN_FLIGHT: set = set()  # this process's commits in flight

#: pysyncobj's failures that leave nothing in any log: the command never left
#: this node's queue (no leader known, queue full) or the leader refused it.
NOT_PROPOSED = frozenset({"QUEUE_FULL", "MISSING_LEADER", "NOT_LEADER", "REQUEST_DENIED"})


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def commit(replica, propose, command: bytes, timeout: float, meanwhile=None):
    """Propose ``command`` through ``propose(command, callback)`` and wait until
    this node applied it.  Raises ApiError(503) if it cannot be proposed (no
    leader or quorum in sight: ``proposed=False``), times out, or fails.

    ``meanwhile()``, if given, runs on this thread while the commit is in
    flight; nothing it computes may leave the node before the commit is done
    (the caller decides after the commit whether to use or discard it)."""
    if not replica.can_serve():
        raise ApiError(503, "no majority reachable from this node", proposed=False)
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def _done(res, err):
        if not fut.done():
            fut.set_result((res, err))

    def callback(res, err):  # runs on the Raft thread
        loop.call_soon_threadsafe(_done, res, err)

    # a plain timer, not asyncio.wait_for: the reply is then one loop pass
    # after the commit instead of two
    timer = loop.call_later(timeout, _expire, fut)
    _IN_FLIGHT.add(fut)
    try:
        sent = getattr(replica, "rounds_sent", 0)
        propose(command, callback)
        if meanwhile is not None:
            if len(_IN_FLIGHT) == 1 and hasattr(replica, "wait_sent"):
                # Alone on this node: let the Raft thread send the append round
                # before `meanwhile` takes the GIL (it would delay the sends).
                # Under load, the round is on its way anyway: no waiting.
                replica.wait_sent(sent, 0.002)
            meanwhile()
        res, err = await fut
    except TimeoutError:
        raise ApiError(503, "commit timed out (the attempt may still be counted)") from None
    finally:
        timer.cancel()
        _IN_FLIGHT.discard(fut)
    if err != 0:
        name = FAIL_NAMES.get(err, err)
        if name in NOT_PROPOSED:
            raise ApiError(503, f"not proposed: {name}", proposed=False)
        raise ApiError(503, f"commit failed: {name} (the attempt may still be counted)")
    return res


async def raft_call(start, timeout: float):
    """Run ``start(callback)`` (which hands a request to the Raft thread) and
    wait for ``callback(res, err)``; returns ``err``.  asyncio.TimeoutError
    if the Raft thread does not answer within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(err) -> None:
        if not fut.done():
            fut.set_result(err)

    def done(res, err):  # Raft thread
        loop.call_soon_threadsafe(settle, err)
    start(done)
    return await asyncio.wait_for(fut, timeout)
