"""The limits in vault_raft/limits.py agree with the layers that enforce them.

A bound that two layers check must be one number: a client that accepts what
the machine refuses wastes a guess round trip, and a machine that accepts what
a sealed record cannot hold would commit a record nobody can recover."""

from __future__ import annotations

import os

from vault_raft import limits
from vault_raft.api import binding as P
from vault_raft.api import openapi
from vault_raft.core import machine as M
from vault_raft.crypto import _opaque_core as core
from vault_raft.crypto import seal as S
from vault_raft.crypto.errors import OpaqueError
from vault_raft.crypto.opaque import ClientLogin
from vault_raft.fleet import tenants as T


def test_opaque_record_length_is_the_crypto_layers():
    assert limits.OPAQUE_RECORD_LEN == core.RECORD_LEN == M.OPAQUE_RECORD_LEN


def test_a_largest_secret_sealed_fits_the_machines_bound():
    key = os.urandom(32)
    sealed = S.seal(key, b"s" * limits.SECRET_MAX, b"ad")
    assert len(sealed) <= limits.SEALED_MAX == M.SEALED_MAX


def test_a_record_key_holds_the_longest_tenant_and_user():
    longest = ("t" * limits.TENANT_ID_MAX).encode() + b"\0" + b"u" * limits.USER_ID_MAX
    assert len(longest) <= limits.RECORD_KEY_MAX == M.USER_MAX


def test_tenant_id_pattern_bound():
    assert T.TENANT_ID.match("a" * limits.TENANT_ID_MAX)
    assert not T.TENANT_ID.match("a" * (limits.TENANT_ID_MAX + 1))


def test_attempt_limits_agree():
    assert M.MAX_ATTEMPTS_LIMIT == limits.MAX_ATTEMPTS_LIMIT
    assert M.DEFAULT_MAX_ATTEMPTS == limits.DEFAULT_MAX_ATTEMPTS
    assert 1 <= limits.DEFAULT_MAX_ATTEMPTS <= limits.MAX_ATTEMPTS_LIMIT


def test_binding_bounds_are_the_limits():
    assert P.USER_MAX == limits.USER_ID_MAX
    assert P.MAX_SECRET == limits.SECRET_MAX


def test_code_bound_is_the_opaque_password_bound():
    ClientLogin.start(b"c" * limits.CODE_MAX)
    try:
        ClientLogin.start(b"c" * (limits.CODE_MAX + 1))
    except OpaqueError:
        pass
    else:
        raise AssertionError("OPAQUE accepted a code above CODE_MAX")


def _schemas(node, out):
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            _schemas(v, out)
    elif isinstance(node, list):
        for v in node:
            _schemas(v, out)
    return out


def test_openapi_states_the_same_bounds():
    every = _schemas(openapi.OPENAPI, [])
    users = [s for s in every if "user id" in str(s.get("description", ""))]
    assert users and all(s["maxLength"] == limits.USER_ID_MAX for s in users)
    attempts = [s for s in every if s.get("type") == "integer"
                and s.get("maximum") == limits.MAX_ATTEMPTS_LIMIT]
    assert attempts
