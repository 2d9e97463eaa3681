"""The guess limit has no side doors, tried against real nodes over the API.

* ``enroll/start`` is no OPRF oracle: an attacker with one counted attempt and
  as many registration evaluations as it likes, doing the RFC 9807 math
  itself, cannot tell the right code from wrong ones.  The same attack finds
  the code on a planted node that evaluates registration under the login key
  (``tests/bugs/buggy_node.py --bug registration-login-key``), so the test can
  fail.
* Recorded ``enroll/finish``, ``change_code``, ``change_secret`` and ``delete``
  requests replayed twice in a row, after destruction, after deletion and
  after a rotation are refused with a 4xx and change nothing.
"""
import json
import os
import sys

import pytest

from vault_raft import client as C
from vault_raft.crypto import _opaque_core as core
from vault_raft.crypto import group, oprf
from vault_raft.crypto.ksf import IDENTITY_KSF

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.cluster

RIGHT = b"correct horse battery staple"
CANDIDATES = [f"candidate {i}".encode() for i in range(12)] + [RIGHT] + [b"another wrong one"]


def _fast(fleet_dir):
    """Identity KSF in fleet.json: the attack's cost is not what is tested here."""
    p = os.path.join(fleet_dir, "fleet.json")
    d = json.load(open(p))
    d["ksf"] = IDENTITY_KSF.to_dict()
    json.dump(d, open(p, "w"))
    return p


class Recorder(C.Client):
    """A client whose every request an observer keeps, to replay it later."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sent: list[tuple[str, dict]] = []

    def post(self, path, body, **kw):
        self.sent.append((path, dict(body)))
        return super().post(path, body, **kw)

    def last(self, path, op=None):
        return next(b for p, b in reversed(self.sent)
                    if p == path and (op is None or b.get("op") == op))


def offline_hits(cli: C.Client, user: bytes, ke2: bytes) -> list[bytes]:
    """The attacker's offline test of every candidate against one KE2, with
    one enroll/start evaluation per candidate (RFC 9807 sections 4.1 and 6.4):
    OPRF output -> randomized password -> masking key -> unmask the KE2's
    masked response -> is it the fleet's public OPAQUE key?"""
    fleet = cli.fleet
    masking_nonce = ke2[core.Noe:core.Noe + core.Nn]
    masked = ke2[core.Noe + core.Nn:core.Noe + core.Nn + core.Npk + core.Ne]
    hits = []
    for code in CANDIDATES:
        blind = group.random_scalar()
        status, out = cli.post("/v1/enroll/start", {"user": user,
                                                     "request": oprf.blind(code, blind)})
        assert status == 200, out
        evaluated = out["response"][:core.Noe]
        rwd = core._randomized_password(code, blind, evaluated, fleet.ksf)
        masking_key = core._expand(rwd, b"MaskingKey", core.Nh)
        pad = core._expand(masking_key, masking_nonce + b"CredentialResponsePad",
                           core.Npk + core.Ne)
        if core._xor(pad, masked)[:core.Npk] == fleet.opaque_server_public_key:
            hits.append(code)
    return hits


def _oracle_attack(cluster) -> tuple[list[bytes], dict]:
    cli = C.Client(_fast(cluster.dir))
    cli.enroll(b"victim", RIGHT, b"the victim's backup key", max_attempts=3)
    # One counted attempt with a code the attacker does not know is wrong.
    guess = core.client_start(b"first guess", group.random_scalar(), os.urandom(32),
                              os.urandom(32))
    status, out = cli.post("/v1/recover/start", {"user": b"victim", "ke1": guess.ke1},
                           retry_timeouts=False)
    assert status == 200 and out["attempts_left"] == 2, out
    hits = offline_hits(cli, b"victim", out["ke2"])
    return hits, {"cli": cli}


def test_enroll_start_is_no_oracle(cluster_factory):
    cl = cluster_factory(3)
    hits, ctx = _oracle_attack(cl)
    assert hits == [], "a registration evaluation tested a code against a login KE2"
    # the owner's code still works, and the owner sees one failed attempt
    rec = ctx["cli"].recover(b"victim", RIGHT)
    assert rec.secret == b"the victim's backup key" and rec.failed_attempts == 1


def test_oracle_attack_finds_the_code_on_a_planted_variant(cluster_factory):
    cl = cluster_factory(3, node_cmd=[sys.executable, os.path.join(HERE, "bugs", "buggy_node.py"),
                                      "--bug", "registration-login-key"])
    hits, _ = _oracle_attack(cl)
    assert hits == [RIGHT]


# ------------------------------------------------------------------ replay

def _replay(cli: C.Client, path: str, body: dict) -> tuple[int, dict]:
    status, out = cli.post(path, body, retry_timeouts=False)
    assert 400 <= status < 500, (path, status, out)
    return status, out


def _state(cli: C.Client, user: bytes, code: bytes):
    """What the fleet holds for ``user``, seen through a recovery with ``code``
    (counts one attempt when a record is there)."""
    try:
        r = cli.recover(user, code)
        return ("released", r.secret)
    except C.WrongCode as exc:
        return ("wrong", exc.attempts_left)
    except C.NoRecord:
        return ("destroyed",)


def test_recorded_requests_replayed_are_refused_and_change_nothing(cluster_factory):
    cl = cluster_factory(3, max_attempts=4)  # unknown users answer the fleet's default - 1
    owner = Recorder(_fast(cl.dir))
    attacker = C.Client(cl.dir + "/fleet.json")
    default_left = 3

    # --- twice in a row: an enrollment, then every kind of change
    owner.enroll(b"ann", b"code-1", b"secret-1", max_attempts=5)
    enroll_ann = owner.last("/v1/enroll/finish")
    _replay(attacker, "/v1/enroll/finish", enroll_ann)
    _replay(attacker, "/v1/enroll/finish", enroll_ann)
    owner.change_secret(b"ann", b"code-1", b"secret-2")
    change_secret = owner.last("/v1/manage", "change_secret")
    owner.change_code(b"ann", b"code-1", b"code-2")
    change_code = owner.last("/v1/manage", "change_code")
    for body in (change_secret, change_code):
        _replay(attacker, "/v1/manage", body)
        _replay(attacker, "/v1/manage", body)
    assert _state(owner, b"ann", b"code-2") == ("released", b"secret-2")
    assert _state(owner, b"ann", b"code-1") == ("wrong", 4)  # the old code is gone

    # --- after deletion: nothing brings the record back
    owner.delete(b"ann", b"code-2")
    delete = owner.last("/v1/manage", "delete")
    for path, body in [("/v1/enroll/finish", enroll_ann), ("/v1/manage", change_secret),
                       ("/v1/manage", change_code), ("/v1/manage", delete)]:
        _replay(attacker, path, body)
    assert _state(owner, b"ann", b"code-2") == ("wrong", default_left)  # unknown user
    assert _state(owner, b"ann", b"code-1") == ("wrong", default_left)

    # --- after destruction: the tombstone stays
    owner.enroll(b"bob", b"bob-code", b"bob-secret", max_attempts=2)
    enroll_bob = owner.last("/v1/enroll/finish")
    owner.change_secret(b"bob", b"bob-code", b"bob-secret-2")
    bob_change = owner.last("/v1/manage", "change_secret")
    for _ in range(2):
        assert _state(attacker, b"bob", b"not it")[0] == "wrong"
    assert _state(attacker, b"bob", b"not it") == ("destroyed",)
    for path, body in [("/v1/enroll/finish", enroll_bob), ("/v1/enroll/finish", enroll_bob),
                       ("/v1/manage", bob_change)]:
        _replay(attacker, path, body)
    assert _state(owner, b"bob", b"bob-code") == ("destroyed",)


def test_replays_after_a_rotation_are_refused(cluster_factory):
    """A rotation moves a user: recover on the retiring fleet, enroll on the new
    one, delete on the old one (what TrustedClient does).  Nothing recorded on
    either fleet brings the old record back or alters the new one."""
    old_fleet, new_fleet = cluster_factory(3), cluster_factory(3)
    old, new = Recorder(_fast(old_fleet.dir)), Recorder(_fast(new_fleet.dir))
    old.enroll(b"cleo", b"cleo-code", b"cleo-secret", max_attempts=4)
    old_enroll = old.last("/v1/enroll/finish")
    rec = old.recover(b"cleo", b"cleo-code")
    new.enroll(b"cleo", b"cleo-code", rec.secret, max_attempts=4)
    new_enroll = new.last("/v1/enroll/finish")
    old._manage(b"cleo", rec, "delete", b"")
    old_delete = old.last("/v1/manage", "delete")
    for cli, path, body in [(old, "/v1/enroll/finish", old_enroll),
                            (old, "/v1/manage", old_delete),
                            (new, "/v1/enroll/finish", new_enroll),
                            (new, "/v1/enroll/finish", old_enroll)]:
        _replay(cli, path, body)
    assert _state(old, b"cleo", b"cleo-code")[0] == "wrong"  # gone from the old fleet
    assert _state(new, b"cleo", b"cleo-code") == ("released", b"cleo-secret")


def test_held_back_requests_sent_later_are_refused(cluster_factory):
    """Requests an attacker held back (so they were never committed), sent as
    they were or altered, after the owner enrolled again and the attacker used
    the attempts up: nothing comes back (the tickets predate the change)."""
    cl = cluster_factory(3)
    owner = C.Client(_fast(cl.dir))
    attacker = C.Client(cl.dir + "/fleet.json")
    user, code = b"dora", b"dora's code"
    record, start = owner._register(user, code)  # the owner's enrollment, held back
    held = {"user": user, "record": record, "ticket": start["ticket"], "max_attempts": 3,
            "upload": owner._upload(user, b"dora's key", b"enroll", start["nonce"])}
    new_record, new_start = owner._register(user, b"new code", "change_code")  # held too
    owner.enroll(user, code, b"dora's key", max_attempts=3)  # the owner tries again
    for _ in range(3):
        assert _state(attacker, user, b"not it")[0] == "wrong"
    assert _state(attacker, user, b"not it") == ("destroyed",)
    altered = dict(held, max_attempts=100,
                   upload=owner._upload(user, b"attacker's key", b"enroll", start["nonce"]))
    for body in (held, altered):
        status, out = _replay(attacker, "/v1/enroll/finish", body)
        assert status == 409 and out.get("reason") == "stale", out
    # a change_code ticket is no enrollment ticket
    status, out = _replay(attacker, "/v1/enroll/finish", dict(
        held, record=new_record, ticket=new_start["ticket"],
        upload=owner._upload(user, b"attacker's key", b"enroll", new_start["nonce"])))
    assert status == 401, out
    assert _state(owner, user, code) == ("destroyed",)
