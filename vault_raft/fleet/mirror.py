"""A verified copy of a witness's log, kept by nodes and by the monitor.

The copy is the list of statements and a tree head signed by the witness for
exactly that list.  :meth:`LogMirror.update` appends the pages a witness
serves and accepts them only if the signed tree head of each page matches the
root of *our* prefix plus the new statements -- so a witness that rewrote
history (a fork) is detected and the copy is left as it was.  From the copy
anyone can compute inclusion and consistency proofs without the witness.
"""

from __future__ import annotations

from typing import Callable

from . import bundle as B
from . import merkle

# start index -> {"statements": [...], "sth": bytes, "sth_sig": bytes}
PageFetcher = Callable[[int], dict]


class LogMirror:
    def __init__(self, witness_pk: bytes, statements: list[bytes] | None = None,
                 sth: bytes | None = None, sth_sig: bytes | None = None):
        self.witness_pk = witness_pk
        self.statements: list[bytes] = []
        self.leaves: list[bytes] = []
        self.sth = B.tree_head(0, merkle.EMPTY_ROOT, 0)
        self.sth_sig = b""
        if statements:
            self._accept(list(statements), sth, sth_sig)

    def copy(self) -> "LogMirror":
        m = LogMirror(self.witness_pk)
        m.statements, m.leaves = list(self.statements), list(self.leaves)
        m.sth, m.sth_sig = self.sth, self.sth_sig
        return m

    @property
    def size(self) -> int:
        return len(self.leaves)

    def _accept(self, new: list[bytes], sth: bytes | None, sth_sig: bytes | None) -> None:
        if not isinstance(sth, bytes) or not isinstance(sth_sig, bytes):
            raise B.BundleMalformed("log page without a tree head")
        B._verify_sig(self.witness_pk, sth_sig, sth, B.BadWitnessSignature, "witness tree head")
        size, root, _ = B.parse_tree_head(sth)
        if not all(isinstance(s, bytes) for s in new):
            raise B.BundleMalformed("log page holds a non-bytes statement")
        leaves = self.leaves + [merkle.hash_leaf(s) for s in new]
        if size != len(leaves) or merkle.root(leaves) != root:
            raise B.ForkedLog(f"the witness's tree head for size {size} does not match this "
                              f"copy of its log ({self.size} entries + {len(new)} new)")
        self.statements += new
        self.leaves = leaves
        self.sth, self.sth_sig = sth, sth_sig

    def update(self, fetch: PageFetcher, max_pages: int = 1000) -> int:
        """Fetch and verify what the witness added since; returns the new size."""
        for _ in range(max_pages):
            page = fetch(self.size)
            new = page.get("statements")
            if not isinstance(new, list):
                raise B.BundleMalformed("log page without statements")
            if not new:
                # an empty page still carries a head: it must match what we hold
                if page.get("sth") != self.sth:
                    self._accept([], page.get("sth"), page.get("sth_sig"))
                return self.size
            self._accept(new, page.get("sth"), page.get("sth_sig"))
        return self.size

    def index_of(self, statement: bytes) -> int:
        return self.statements.index(statement)

    def proofs(self, index: int, since: int) -> tuple[list[bytes], list[bytes]]:
        """(inclusion proof of ``index``, consistency proof between ``since`` and
        our size, in whichever direction) for the current tree head."""
        incl = merkle.inclusion_proof(self.leaves, index)
        if 0 < since < self.size:
            cons = merkle.consistency_proof(self.leaves, since)
        else:
            cons = []
        return incl, cons
