"""Pre-vote and vote bookkeeping for the pysyncobj replica.

pysyncobj has no pre-vote: a node that was cut off from the leader but not
from everyone (one-way links, a bridge, a ring) keeps raising its term, and
when its vote requests reach the healthy leader's followers they adopt the
term and the leader is deposed.  Raft thesis 9.6: before a real election a
node asks "would you vote for me in term+1?" without anyone changing term; a
node that heard from a leader within the minimum election timeout says no (so
does a leader with a quorum).  Only with a majority of yeses does pysyncobj
start its election.  Leadership transfers (TimeoutNow) skip the pre-vote, as
in etcd.

Every received message passes :meth:`PreVote._on_message` first: it answers
pre-votes, counts each voter once, notes leader contact and forwarded
commands, and refuses a vote (and term) to a candidate behind what a
recovering node acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vault_raft.raft import _pysyncobj as pso


class PreVote:
    """The election side of :class:`~vault_raft.raft.replica.DurableReplica` (a mixin)."""

    _pso_on_message: Callable
    if TYPE_CHECKING:
        hasQuorum: bool  # SyncObj's

        @property
        def recovery(self) -> dict | None: ...  # the replica's

    def _init_votes(self, pre_vote: bool, lease: float) -> None:
        """Set before pysyncobj starts (its first message may arrive at once)."""
        self._pre_vote = pre_vote
        self._lease = lease  # heard from a leader this recently: deny pre-votes
        self._heard_leader = float("-inf")
        self._pv_term, self._pv_granted = 0, False
        self._pv_votes: set = set()
        self._voters: dict[int, set] = {}
        self._forwarded_at = float("-inf")  # a follower forwarded a command (lazy notices)

    def _term(self) -> int:
        return pso.current_term(self)

    def _log_position(self) -> tuple[int, int]:
        last = pso.last_log_entry(self)
        return last[2], last[1]  # (term, index): compared as a tuple

    def _gate_election(self) -> None:
        if pso.is_leader(self) or not pso.has_self_node(self):
            return
        now = pso.now()
        if pso.election_deadline(self) >= now or pso.transfer_in_progress(self):
            return
        if self._pv_granted:  # a majority would vote: let pysyncobj elect now
            self._pv_granted = False
            return
        others = pso.other_nodes(self)
        pso.set_election_deadline(self, now + pso.election_timeout(self))
        if pso.leader(self) is not None:
            # the timer fired: the leader is lost, as when pysyncobj starts an
            # election, so requests here are refused at once instead of waiting
            pso.forget_leader(self)
        self._pv_term, self._pv_votes = self._term() + 1, {None}
        if not others:
            self._pv_granted = True
            return
        term, idx = self._log_position()
        for node in others:
            pso.transport(self).send(node, {"type": "pre_vote", "term": self._pv_term,
                                            "last_log_index": idx, "last_log_term": term})

    def _vote_position(self) -> tuple[int, int]:
        """The log position a candidate must reach for this node's vote: its
        log's end, or, while recovering, the end of the log it had made
        durable (so a damaged log votes as the intact one would have)."""
        pos = self._log_position()
        rec = self.recovery
        return max(pos, (rec["need_term"], rec["need"])) if rec else pos

    def _would_vote(self, msg: dict) -> bool:
        if msg["term"] <= self._term():
            return False
        if pso.is_leader(self):
            return not self.hasQuorum  # a leader with a quorum keeps it
        if pso.now() - self._heard_leader < self._lease:
            return False
        return (msg["last_log_term"], msg["last_log_index"]) >= self._vote_position()

    def _on_message(self, node, msg) -> None:
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "request_vote" and self.recovery is not None and \
                (msg.get("last_log_term", -1), msg.get("last_log_index", -1)) \
                < self._vote_position():
            return  # a candidate behind what this node acknowledged gets no vote (nor term)
        if kind == "append_entries" and msg.get("term", -1) >= self._term():
            self._heard_leader = pso.now()
        elif kind == "apply_command":
            self._forwarded_at = pso.now()
        elif kind == "pre_vote":
            pso.transport(self).send(node, {"type": "pre_vote_response", "term": msg["term"],
                                            "granted": self._would_vote(msg)})
            return
        elif kind == "pre_vote_response":
            if msg["granted"] and msg["term"] == self._pv_term == self._term() + 1 \
                    and not pso.is_leader(self):
                self._pv_votes.add(node)
                if len(self._pv_votes) > (len(pso.other_nodes(self)) + 1) / 2:
                    self._pv_granted = True
                    pso.set_election_deadline(self, 0)  # elect on the next tick
            return
        elif kind == "response_vote":
            # pysyncobj counts vote messages, not voters: a duplicated vote
            # would count twice (two leaders in one term under a network that
            # duplicates; TCP does not, but the count must not depend on it).
            voters = self._voters.setdefault(msg.get("term"), set())
            if node in voters:
                return
            voters.add(node)
            if len(self._voters) > 4:
                for t in sorted(self._voters)[:-4]:
                    del self._voters[t]
        return self._pso_on_message(node, msg)
