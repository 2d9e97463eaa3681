"""The client of a trusted fleet: :class:`TrustedClient`, configured with
``client.json`` (:class:`ClientConfig`), fetches and verifies the fleet's
signed bundle before it sends anything derived from the recovery code, and
follows rotations to a new fleet (``docs/trust.md``)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import time
from dataclasses import dataclass

from vault_raft.api import channel as CH
from vault_raft.api import http as wire
from vault_raft.client import errors as E
from vault_raft.client.fleet import Client, Recovery, TokenSource, _code, _user, token_source
from vault_raft.fleet.config import ConfigError, FleetInfo
from vault_raft.trust import bundle as B

log = logging.getLogger("vault_raft.client")


@dataclass(frozen=True)
class ClientConfig:
    """``client.json``: everything a client is configured with."""
    namespace: str
    operator_key: bytes
    witness_key: bytes
    endpoints: tuple[str, ...]
    # how old a witness tree head may be and still vouch that a bundle is the newest
    max_head_age: int = B.MAX_HEAD_AGE

    @classmethod
    def load(cls, path: str) -> ClientConfig:
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"client config {path} not found (the operator's "
                              "'vault-raft operator init' writes one)") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"client config {path} unreadable: {exc}") from None
        try:
            if d["version"] != 1:
                raise ConfigError(f"client config {path}: unsupported version {d['version']}")
            age = d.get("max_head_age", B.MAX_HEAD_AGE)
            if isinstance(age, bool) or not isinstance(age, int) or not 60 <= age <= 7 * 86400:
                raise ValueError("max_head_age must be 60..604800 seconds")
            c = cls(str(d["namespace"]), bytes.fromhex(d["operator_key"]),
                    bytes.fromhex(d["witness_key"]), tuple(str(e) for e in d["endpoints"]), age)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"client config {path} is malformed: {exc}") from None
        if len(c.operator_key) != 32 or len(c.witness_key) != 32:
            raise ConfigError(f"client config {path}: keys must be 32 bytes")
        return c


def default_state_path(config_path: str) -> str:
    base = os.path.splitext(os.path.abspath(config_path))[0]
    return base + ".trust-state.json"


class TrustedClient:
    """A client that trusts a fleet only through its verified bundle."""

    def __init__(self, config: ClientConfig | str, state_path: str | None = None, *,
                 timeout: float = 10.0, request_timeout: float = 5.0,
                 clock=time.time, token: str | TokenSource | None = None):
        if isinstance(config, str):
            state_path = state_path or default_state_path(config)
            config = ClientConfig.load(config)
        if state_path is None:
            raise E.InvalidInput("a trust state path is needed to remember the log seen")
        self.config, self.state_path = config, state_path
        self.token = token_source(token)  # the tenant's token for each user request
        self.timeout, self.request_timeout, self.clock = timeout, request_timeout, clock
        self._clients: dict[B.FleetEntry, Client] = {}
        self.bundle: B.Bundle | None = None

    # ------------------------------------------------------------- trust
    # Failures that say "this node is behind", not "this answer is forged": the
    # client asks the next node, and reports them only if no node does better.
    _STALE = (B.ReplayedBundle, B.StaleTreeHead, B.LaggingLog)

    def verify_fleet(self) -> B.Bundle:
        """Fetch the bundle from some node and verify it; raise E.Untrusted if it
        fails, Unavailable if no node answers.

        A node that lags (a smaller tree head than the one saved, without a
        proof), serves an older or superseded epoch, or a tree head too old to
        vouch for freshness, is skipped: another node may be up to date.  Only
        when none is does the client stop, with exit code 6 (a lagging view
        reported as ``ForkedLog``).  Any other failure is evidence of forgery
        and stops at once."""
        try:
            state = B.TrustState.load(self.state_path)
        except B.TrustError as exc:
            raise E.Untrusted(str(exc)) from None
        urls = list(dict.fromkeys(state.endpoints + list(self.config.endpoints)))
        if not urls:
            raise E.Untrusted("no endpoints to fetch the fleet's bundle from")
        behind: list[tuple[B.TrustError, str]] = []
        last = "no node answered"
        for url in urls:
            try:  # TLS, but not pinned yet: the answer authenticates itself (verify below)
                status, out = wire.call(url, "GET", f"/v1/trust?since={state.tree_size}",
                                        timeout=self.request_timeout, channel=CH.UNPINNED)
            except (OSError, http.client.HTTPException, wire.WireError) as exc:
                last = f"{url}: {exc.__class__.__name__}"
                continue
            if status != 200:
                last = f"{url}: HTTP {status} {out.get('message')}"
                continue
            trial = B.TrustState(state.tree_size, state.tree_root, dict(state.epochs),
                                 list(state.endpoints))
            try:
                bundle = B.verify(B.SignedBundle.from_wire(out), self.config.operator_key,
                                  self.config.witness_key, trial, int(self.clock()),
                                  self.config.max_head_age)
            except self._STALE as exc:
                behind.append((exc, url))
                log.info("%s is behind (%s: %s); asking another node", url,
                         exc.__class__.__name__, exc)
                continue
            except B.TrustError as exc:
                raise E.Untrusted(f"fleet bundle from {url} rejected: "
                                f"{exc.__class__.__name__}: {exc}", type(exc)) from None
            if bundle.namespace != self.config.namespace:
                raise E.Untrusted(f"{url} serves namespace {bundle.namespace!r}, not "
                                f"{self.config.namespace!r}", B.BundleMalformed)
            trial.endpoints = [e for f in bundle.fleets for e in f.endpoints]
            if trial != state:
                trial.save(self.state_path)
            self.bundle = bundle
            return bundle
        if behind:
            # a lagging view outranks the others: no node proved the log seen is kept
            worst, url = next(((e, u) for e, u in behind if isinstance(e, B.LaggingLog)),
                              behind[0])
            reason = B.ForkedLog if isinstance(worst, B.LaggingLog) else type(worst)
            others = "; ".join(f"{u}: {e.__class__.__name__}" for e, u in behind if e is not worst)
            raise E.Untrusted(f"no node gave a current, consistent view of the fleet's bundle: "
                            f"{url}: {worst.__class__.__name__}: {worst}"
                            + (f" (also {others})" if others else ""), reason)
        raise E.Unavailable(f"could not fetch the fleet's bundle ({last})")

    def _client(self, entry: B.FleetEntry) -> Client:
        if entry not in self._clients:
            try:
                info = FleetInfo.from_entry(entry)
            except ConfigError as exc:
                raise E.Untrusted(str(exc), B.BundleMalformed) from None
            if info.channel_ca is None:
                raise E.Untrusted(f"the verified bundle names no channel key for fleet "
                                f"{entry.fleet_id} (a v1 bundle): refusing to talk to it over "
                                "a channel that cannot be authenticated; the operator must "
                                "publish a new epoch ('vault-raft fleet publish')",
                                B.UnpinnedChannel)
            plain = [e for e in entry.endpoints if not e.startswith("https://")]
            if plain:
                raise E.Untrusted(f"fleet {entry.fleet_id} lists endpoints without TLS "
                                f"({', '.join(plain)}): a fleet made with --insecure-http is "
                                "for local debugging through fleet.json only",
                                B.UnpinnedChannel)
            self._clients[entry] = Client(info, timeout=self.timeout,
                                          request_timeout=self.request_timeout,
                                          token=self.token)
        return self._clients[entry]

    # -------------------------------------------------------- operations
    def enroll(self, user, code, secret: bytes, max_attempts: int | None = None) -> int:
        u, c = _user(user), _code(code)
        return self._client(self.verify_fleet().current).enroll(u, c, secret, max_attempts)

    def _recover(self, u: bytes, c: bytes) -> tuple[Recovery, Client]:
        """Recover on the current fleet, else on a retiring one -- and then move
        the user to the current fleet (re-enroll, then delete the old record)."""
        bundle = self.verify_fleet()
        cur = self._client(bundle.current)
        try:
            return cur.recover(u, c), cur
        except (E.WrongCode, E.NoRecord) as exc:  # not here (fake answer), a wrong code, or
            if not bundle.retiring:           # another record destroyed under this id
                raise
            first, left = exc, [exc.attempts_left if isinstance(exc, E.WrongCode) else 0]
        found = False
        for entry in bundle.retiring:
            old = self._client(entry)
            try:
                rec = old.recover(u, c)
            except E.WrongCode as exc:
                left.append(exc.attempts_left)
                continue
            except E.NoRecord:
                continue
            found = True
            # Recovered: from here on this secret is never lost, whatever fails.
            try:
                cur.enroll(u, c, rec.secret, rec.max_attempts)
            except E.VaultError as exc:
                # Another record holds the id on the current fleet (or the fleet failed
                # us just now).  Return the secret and keep the old record, the only
                # copy; never guess again at a record that is not known to be ours.
                log.warning("recovered %r on retiring fleet %s but could not move it to the "
                            "current fleet (%s): the old record is kept; ask the operator",
                            u, entry.fleet_id, exc)
                return dataclasses.replace(rec, migration_conflict=True), old
            try:
                old._manage(u, rec, "delete", b"")
            except E.VaultError as exc:  # the old fleet is destroyed when it retires anyway
                log.warning("migrated %r but could not delete it on %s: %s", u,
                            entry.fleet_id, exc)
            log.info("moved %r from fleet %s to %s", u, entry.fleet_id, bundle.current.fleet_id)
            return dataclasses.replace(rec, migrated_from=entry.fleet_id), cur
        if isinstance(first, E.NoRecord) and not found:
            raise first
        raise E.WrongCode(min(left))

    def recover(self, user, code) -> Recovery:
        return self._recover(_user(user), _code(code))[0]

    def _manage(self, user, code, op: str, make_request) -> Recovery:
        u, c = _user(user), _code(code)
        rec, cli = self._recover(u, c)
        if rec.migration_conflict:
            raise E.VaultError("this user's record could not be moved to the current fleet "
                             "(another record holds the id there): no change is made; ask the "
                             "operator")
        if rec.migrated_from is not None:
            rec = cli.recover(u, c)  # a session on the fleet the record now lives on
        cli._manage(u, rec, op, *make_request(cli, u, rec))
        return rec

    def change_secret(self, user, code, new_secret: bytes) -> Recovery:
        return self._manage(user, code, "change_secret", lambda cli, u, rec: (
            cli._upload(u, new_secret, b"change_secret", rec.token),))

    def change_code(self, user, code, new_code) -> Recovery:
        new = _code(new_code)
        return self._manage(user, code, "change_code",
                            lambda cli, u, rec: cli._change_code_request(u, new))

    def delete(self, user, code) -> Recovery:
        return self._manage(user, code, "delete", lambda cli, u, rec: (b"",))
