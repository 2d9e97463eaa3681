"""A verified copy of a witness's log, kept by nodes, the operator and the monitor.

The copy is a :class:`~.merkle.HashTree` of the log's leaf hashes (about 64
bytes an entry) and a tree head signed by the witness for exactly those
leaves.  :meth:`LogMirror.update` appends the pages a witness serves and
accepts each only if its signed tree head matches the root of *our* prefix
plus the new statements -- so a witness that rewrote history (a fork) is
detected and the copy is left as it was.  From the copy anyone can compute
inclusion and consistency proofs without the witness, in O(log n).

Statements themselves are kept only if ``keep`` says so (the monitor keeps
all of them; a node none: it serves the one statement of its bundle from its
trust file).  ``max_entries`` bounds the copy: past it, it stops following
the log (:class:`MirrorFull`) instead of growing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vault_raft.errors import VaultRaftError
from vault_raft.trust import bundle as B
from vault_raft.trust import merkle

# start index -> {"statements": [...], "sth": bytes, "sth_sig": bytes}
PageFetcher = Callable[[int], dict]
MAX_ENTRIES = 1 << 20  # ~64 MiB of hashes: a log this long is years of rate-limited publishing


class MirrorFull(VaultRaftError):
    """The witness's log outgrew the bound this copy was given."""


@dataclass(frozen=True)
class Head:
    """The verified head: replaced as a whole, so readers see a matching triple."""
    size: int
    sth: bytes
    sth_sig: bytes


class LogMirror:
    def __init__(self, witness_pk: bytes, *, keep: Callable[[bytes], bool] | None = None,
                 max_entries: int = MAX_ENTRIES):
        self.witness_pk = witness_pk
        self.keep = keep
        self.max_entries = max_entries
        self.tree = merkle.HashTree()
        self.kept: dict[int, bytes] = {}  # index -> statement, for those ``keep`` wanted
        self.head = Head(0, B.tree_head(0, merkle.EMPTY_ROOT, 0), b"")

    @classmethod
    def from_statements(cls, witness_pk: bytes, statements: list, sth, sth_sig,
                        **kw) -> LogMirror:
        m = cls(witness_pk, **kw)
        m._accept(list(statements), sth, sth_sig)
        return m

    @classmethod
    def from_hashes(cls, witness_pk: bytes, leaf_hashes: bytes, sth, sth_sig,
                    **kw) -> LogMirror:
        """From concatenated leaf hashes (a trust file): checked against the head."""
        m = cls(witness_pk, **kw)
        if not isinstance(leaf_hashes, bytes) or len(leaf_hashes) % merkle.HASH_LEN:
            raise B.BundleMalformed("leaf hashes must be 32 bytes each")
        m._check_head(sth, sth_sig)
        if len(leaf_hashes) // merkle.HASH_LEN > m.max_entries:
            raise MirrorFull(f"the log holds more than {m.max_entries} entries")
        m.tree = merkle.HashTree.from_hashes(leaf_hashes)
        m._publish(sth, sth_sig)
        return m

    @property
    def size(self) -> int:
        return self.head.size

    @property
    def sth(self) -> bytes:
        return self.head.sth

    @property
    def sth_sig(self) -> bytes:
        return self.head.sth_sig

    @property
    def statements(self) -> list[bytes]:
        """The kept statements in log order (all of them if ``keep`` is None)."""
        return [self.kept[i] for i in sorted(self.kept)]

    def _check_head(self, sth, sth_sig) -> B.TreeHead:
        if not isinstance(sth, bytes) or not isinstance(sth_sig, bytes):
            raise B.BundleMalformed("log page without a tree head")
        B._verify_sig(self.witness_pk, sth_sig, sth, B.BadWitnessSignature, "witness tree head")
        return B.parse_head(sth)

    def _publish(self, sth: bytes, sth_sig: bytes) -> None:
        head = B.parse_head(sth)
        if head.size != self.tree.size or self.tree.root() != head.root:
            raise B.ForkedLog(f"the witness's tree head for size {head.size} does not match "
                              f"this copy of its log ({self.tree.size} entries)")
        self.head = Head(head.size, sth, sth_sig)

    def _accept(self, new: list, sth, sth_sig) -> None:
        head = self._check_head(sth, sth_sig)
        if not all(isinstance(s, bytes) for s in new):
            raise B.BundleMalformed("log page holds a non-bytes statement")
        base = self.size
        if base + len(new) > self.max_entries:
            raise MirrorFull(f"the witness's log grew past {self.max_entries} entries; this "
                             f"copy stays at {base}")
        if head.size != base + len(new):
            raise B.ForkedLog(f"the witness's tree head for size {head.size} does not match "
                              f"this copy of its log ({base} entries + {len(new)} new)")
        try:
            for s in new:
                self.tree.append(merkle.hash_leaf(s))
            if self.tree.root() != head.root:
                raise B.ForkedLog(f"the witness's tree head for size {head.size} does not "
                                  f"match this copy of its log ({base} entries + {len(new)} "
                                  "new)")
        except BaseException:
            self.tree.truncate(base)
            raise
        if self.keep is None:
            self.kept.update(zip(range(base, base + len(new)), new, strict=True))
        else:
            self.kept.update((base + i, s) for i, s in enumerate(new) if self.keep(s))
        self.head = Head(head.size, sth, sth_sig)

    def apply_page(self, page) -> bool:
        """Verify and append one page the witness served for our size; returns
        True if it held statements (there may be more)."""
        if not isinstance(page, dict):
            raise B.BundleMalformed("log page is not a map")
        new = page.get("statements")
        if not isinstance(new, list):
            raise B.BundleMalformed("log page without statements")
        if not new:
            # an empty page still carries a head (a newer timestamp, the
            # namespace's newest epoch): it must match what we hold
            if page.get("sth") != self.sth:
                self._accept([], page.get("sth"), page.get("sth_sig"))
            return False
        self._accept(new, page.get("sth"), page.get("sth_sig"))
        return True

    def update(self, fetch: PageFetcher, max_pages: int = 1000) -> int:
        """Fetch and verify what the witness added since; returns the new size."""
        for _ in range(max_pages):
            if not self.apply_page(fetch(self.size)):
                break
        return self.size

    def index_of(self, statement: bytes) -> int:
        for i, s in self.kept.items():
            if s == statement:
                return i
        raise ValueError("statement not kept in this copy")

    def proofs(self, index: int, since: int, head: Head | None = None
               ) -> tuple[list[bytes], list[bytes]]:
        """(inclusion proof of ``index``, consistency proof between ``since`` and
        the head's size, in whichever direction) for ``head`` (default: ours).
        O(log n) from stored hashes; a ``since`` beyond the head gets none."""
        size = (head or self.head).size
        incl = self.tree.inclusion_proof(index, size)
        if 0 < since < size:
            cons = self.tree.consistency_proof(since, size)
        else:
            cons = []
        return incl, cons
