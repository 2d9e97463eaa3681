"""The monitor behind ``vault-raft audit verify``: check a witness's whole log.

It fetches every page of the log (each with a signed tree head that must match
the root of everything fetched so far), checks consistency with the tree head
it saw on its previous run (kept in a state file, so a witness that rewrites
history is caught across runs), decodes every statement, and reports per
namespace the bundles logged: epoch, digest and time.  It flags what the
witness's own rules should have prevented: two different digests for one
epoch, epochs that do not rise by exactly one, a digest logged twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from vault_raft.trust import bundle as B
from vault_raft.trust.mirror import LogMirror


@dataclass
class AuditReport:
    size: int
    root: bytes
    entries: dict = field(default_factory=dict)  # namespace -> [(index, epoch, digest, ts)]
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(mirror: LogMirror, state: B.TrustState) -> AuditReport:
    """Judge a verified copy of the log; checks and then advances ``state``."""
    size, root, _ = B.parse_tree_head(mirror.sth)
    report = AuditReport(size, root)
    if state.tree_size:
        if size < state.tree_size:
            report.problems.append(f"the log shrank: {size} entries, {state.tree_size} seen "
                                   "before (rollback)")
        elif mirror.tree.root(state.tree_size) != state.tree_root:
            report.problems.append(f"the first {state.tree_size} entries changed since the "
                                   "last audit (history rewritten: a fork)")
    seen_digests: dict[bytes, int] = {}
    for i, st in enumerate(mirror.statements):
        try:
            v, ns, ts, epoch, digest = msgpack.unpackb(st, raw=False)
            if v != B.STATEMENT_V:
                raise ValueError
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            report.problems.append(f"entry {i} is not a bundle statement")
            continue
        rows = report.entries.setdefault(ns, [])
        for _, e, d, _ in rows:
            if e == epoch and d != digest:
                report.problems.append(f"{ns}: two different bundles for epoch {epoch} "
                                       f"({d.hex()[:16]}, {digest.hex()[:16]})")
        if rows and epoch != rows[-1][1] + 1 and not any(e == epoch for _, e, _, _ in rows):
            report.problems.append(f"{ns}: epoch {epoch} follows epoch {rows[-1][1]}")
        if not rows and epoch != 1:
            report.problems.append(f"{ns}: first logged epoch is {epoch}, not 1")
        if digest in seen_digests:
            report.problems.append(f"entry {i} repeats the digest of entry {seen_digests[digest]}")
        seen_digests[digest] = i
        rows.append((i, epoch, digest, ts))
    if report.ok and size >= state.tree_size:
        state.tree_size, state.tree_root = size, root
    return report


def check_namespace_head(report: AuditReport, mirror: LogMirror, page: dict,
                         namespace: str) -> None:
    """A witness head for ``namespace`` (from ``GET /v1/log?namespace=``) must
    name the namespace's newest bundle among the entries it covers: clients
    trust it for freshness, so a witness that names an old epoch is caught
    here.  Adds to ``report.problems``."""
    sth: Any = page.get("sth")  # not checked here: the verification below refuses a non-bytes
    sig: Any = page.get("sth_sig")
    try:
        B._verify_sig(mirror.witness_pk, sig, sth, B.BadWitnessSignature, "witness tree head")
        head = B.parse_head(sth)
    except (B.TrustError, TypeError) as exc:
        report.problems.append(f"{namespace}: head unusable: {exc}")
        return
    if head.version != B.STH_V or head.namespace != namespace:
        report.problems.append(f"{namespace}: the witness's head does not name the namespace")
        return
    if head.size > mirror.size:
        return  # the log grew since the copy was fetched: judged on the next run
    if mirror.tree.root(head.size) != head.root:
        report.problems.append(f"{namespace}: a head of size {head.size} that is not this log's")
        return
    newest = (0, bytes(32))
    for i, epoch, digest, _ in report.entries.get(namespace, []):
        if i < head.size:
            newest = (epoch, digest)
    if (head.epoch, head.digest) != newest:
        report.problems.append(f"{namespace}: the witness's head names epoch {head.epoch} as "
                               f"the newest, the log epoch {newest[0]} (a head that would hide "
                               "a newer bundle)")
