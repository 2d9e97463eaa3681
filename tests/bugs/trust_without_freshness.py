"""A planted client: bundle verification without the freshness check.

This is how clients verified bundles before tree head v2: everything but
"a recent witness head names this bundle as its namespace's newest".  A
client with no saved state then accepts any superseded bundle for its whole
validity window (30 days by default).  tests/test_trust_stall.py runs the
same scenario with and without it, to show that its test can fail.

Used only by tests; nothing in the vault_raft package can load it.
"""
import contextlib

from vault_raft.trust import bundle as B


@contextlib.contextmanager
def without_freshness():
    real = B.check_freshness
    B.check_freshness = lambda sth, bundle, now, max_age: B.parse_head(sth)
    try:
        yield
    finally:
        B.check_freshness = real
