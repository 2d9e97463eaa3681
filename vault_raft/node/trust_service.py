"""What a node serves at ``GET /v1/trust`` and ``GET /v1/deployment``.

The node holds the bundle the operator published to it (``trust.bin``) and a
verified copy of the witness's log (:class:`~.mirror.LogMirror`: leaf hashes
only, about 64 bytes an entry, bounded).  A request is answered from what the
node already holds, and only that:

* it never waits on the witness: one background task refreshes the copy,
  with one fetch in flight at a time and a total deadline per fetch
  (:data:`FETCH_DEADLINE_S`), so a paused witness or a tarpit in its place
  costs the request path nothing;
* a client that has seen a larger log than the node holds (``since`` beyond
  the node's head) gets the node's head and no consistency proof -- it then
  asks another node -- and merely wakes the background task, at most once
  per :data:`LAG_FETCH_GAP_S`;
* proofs come from stored hashes in O(log n) (:class:`~.merkle.HashTree`),
  the inclusion proof once per head, so no request does more than a few
  dozen look-ups and hashes, on the event loop;
* the trust file is watched by a second background task; a request that
  finds the file newer than what is loaded (one ``stat``) waits for that task
  to load it -- local disk only, at most :data:`FILE_WAIT_S` -- so a client
  right after a publish gets the new bundle.

Nothing here is trusted by clients: they verify every signature and proof.

Freshness: each witness head the node fetches names its namespace's newest
bundle.  When a head shows the node's own bundle superseded, the operator's
new trust file normally follows within moments (it is written right after the
witness co-signs), so the node keeps serving its previous head for up to
:data:`HOLD_SUPERSEDED_S` while it watches for the file.  Past that it serves
the newer head and clients skip it (a node of a retired fleet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import aiohttp

from vault_raft.api import binding as P
from vault_raft.errors import VaultRaftError
from vault_raft.fleet.operator import (
    TRUST_FILE,
    OperatorError,
    load_trust_file,
    trust_mirror,
)
from vault_raft.logs import Throttled
from vault_raft.trust import bundle as B
from vault_raft.trust.mirror import Head, LogMirror, MirrorFull

log = logging.getLogger("vault_raft.trust")

REFRESH_S = 5.0  # fetch what the witness added, this often
FETCH_DEADLINE_S = 2.0  # a whole fetch (every page), however slowly the witness answers
LAG_FETCH_GAP_S = 1.0  # a client ahead of the node wakes a fetch at most this often
FILE_CHECK_S = 1.0  # look for a new trust.bin this often
FILE_WAIT_S = 1.0  # a request waits at most this long for a new trust file to load
HOLD_SUPERSEDED_S = 10.0  # see the module docstring
MAX_PAGE_BYTES = 1 << 20  # a page of 512 statements is ~60 KiB
CONSISTENCY_CACHE = 256  # consistency proofs kept per head (one per ``since`` asked)


class NoBundle(VaultRaftError):
    """Nothing was published to this node yet (or its trust file is unusable)."""


@dataclass
class _View:
    """What requests are answered from; replaced as a whole, never changed
    (but for its cache of consistency proofs, which only grows)."""
    trust: dict
    mirror: LogMirror
    head: Head
    inclusion: list
    namespace: str
    epoch: int
    consistency: dict = field(default_factory=dict)  # since -> proof


class TrustService:
    def __init__(self, node_dir: str):
        self.path = os.path.join(node_dir, TRUST_FILE)
        self._view: _View | None = None
        # (the trust file as last loaded, the copy of the log the fetches extend):
        # one attribute, so every reader sees a matching pair
        self._held: tuple[dict, LogMirror] | None = None
        self._mtime: int | None = None
        self._check_done = asyncio.Event()  # set when the file check under way is done
        self._file_wake = asyncio.Event()
        self._fetch_wake = asyncio.Event()
        self._lock = threading.Lock()  # file reload vs page apply (threads); never on the loop
        self._lag_wanted = False
        self._last_fetch = -1e9
        self._superseded_since: float | None = None
        self._superseded_said = False
        self._fetch_warn = Throttled(log)  # a warning at most once a minute
        self._file_warn = Throttled(log)
        self.stats = {"fetches": 0, "fetch_failures": 0, "lag_wakeups": 0}

    # ------------------------------------------------------------- requests
    async def answer(self, since: int) -> dict:
        """The signed bundle with proofs for the client's ``since`` (the size
        of the log it has seen).  Never waits on the witness."""
        v = await self._current()
        size = v.head.size
        if since > size:  # the client saw more of the log than we hold: we lag
            self._note_lag()
            cons: list = []
        elif 0 < since < size:
            cached = v.consistency.get(since)
            if cached is None:
                cached = v.mirror.tree.consistency_proof(since, size)
                if len(v.consistency) < CONSISTENCY_CACHE:
                    v.consistency[since] = cached
            cons = cached
        else:
            cons = []
        out = dict(v.trust["signed"])
        out.update(inclusion=v.inclusion, consistency=cons, sth=v.head.sth,
                   sth_sig=v.head.sth_sig)
        return out

    async def deployment(self, fleet_id: str) -> dict:
        v = await self._current()
        dep = v.trust.get("deployments", {}).get(fleet_id)
        if dep is None:
            raise KeyError(fleet_id)
        return dep

    async def _current(self) -> _View:
        """The view; if the operator has just written a new trust file, first
        let the file task load it (local disk only, at most FILE_WAIT_S), so a
        client right after a publish gets the new bundle."""
        try:  # one stat of a local file: about a microsecond
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime = None
        deadline = time.monotonic() + FILE_WAIT_S
        while mtime is not None and mtime != self._mtime and time.monotonic() < deadline:
            done = self._check_done
            self._file_wake.set()
            try:
                await asyncio.wait_for(done.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        if self._view is None:
            raise NoBundle("no bundle has been published to this node yet")
        return self._view

    def _note_lag(self) -> None:
        if not self._lag_wanted:
            self._lag_wanted = True
            self.stats["lag_wakeups"] += 1
            self._fetch_wake.set()

    def status(self) -> dict:
        v = self._view
        if v is None:
            return {"bundle": None}
        h = B.parse_head(v.head.sth)
        return {"namespace": v.namespace, "epoch": v.epoch, "log_size": h.size,
                "head_age_s": max(0, int(time.time()) - h.timestamp),
                "newest_epoch": h.epoch, **self.stats}

    # ------------------------------------------------------------ background
    async def run(self) -> None:
        """Watch the trust file and follow the witness's log, forever: two
        tasks, so a slow witness never delays a new trust file."""
        await asyncio.gather(self._watch_file(), self._follow_witness())

    async def _watch_file(self) -> None:
        while True:
            done = self._check_done
            try:
                changed = await asyncio.to_thread(self._reload)
                self._publish(changed)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the task die
                log.exception("trust file check failed")
            self._check_done = asyncio.Event()
            done.set()
            await _sleep_or(self._file_wake, FILE_CHECK_S)

    async def _follow_witness(self) -> None:
        timeout = aiohttp.ClientTimeout(total=FETCH_DEADLINE_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                now = time.monotonic()
                if self._held is not None and (
                        now - self._last_fetch >= REFRESH_S or
                        self._lag_wanted and now - self._last_fetch >= LAG_FETCH_GAP_S):
                    self._lag_wanted = False
                    self._last_fetch = now
                    try:
                        await self._fetch(session, self._held)
                        self._publish(False)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("witness log refresh failed")
                wait = REFRESH_S - (time.monotonic() - self._last_fetch)
                if self._lag_wanted:
                    wait = min(wait, LAG_FETCH_GAP_S - (time.monotonic() - self._last_fetch))
                await _sleep_or(self._fetch_wake, max(0.05, wait))

    def _reload(self) -> bool:
        """Load trust.bin if it changed (in a worker thread); True if it did."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        try:
            trust = load_trust_file(self.path)
            if trust is None:  # removed since the stat: as if it were not there
                return False
            fmirror = trust_mirror(trust)
            bundle = B.Bundle.from_canonical(trust["signed"]["bundle"])
        except (OperatorError, B.TrustError, MirrorFull, KeyError, TypeError) as exc:
            self._file_warn.warn("%s unusable, still serving what was loaded before: %s",
                                 self.path, exc)
            self._mtime = mtime
            return False
        trust["namespace"] = bundle.namespace
        trust["_epoch"] = bundle.epoch
        with self._lock:  # not while a fetched page is being added to ours
            mine = self._held[1] if self._held else None
            if mine is not None and mine.witness_pk == fmirror.witness_pk and \
                    mine.size > fmirror.size and \
                    mine.tree.root(fmirror.size) == B.parse_head(fmirror.sth).root:
                fmirror = mine  # ours extends the file's, so holds the bundle's statement too
            self._held, self._mtime = (trust, fmirror), mtime
        log.info("loaded %s: %s epoch %d (log size %d)", self.path, bundle.namespace,
                 bundle.epoch, fmirror.size)
        return True

    async def _fetch(self, session: aiohttp.ClientSession,
                     held: tuple[dict, LogMirror]) -> None:
        """Fetch and verify what the witness added, page by page, within
        FETCH_DEADLINE_S in all (the whole fetch's timeout, per request,
        and this loop's own deadline)."""
        trust, mirror = held
        base = trust["witness"].rstrip("/")
        ns = urllib.parse.quote(trust["namespace"], safe="")
        deadline = time.monotonic() + FETCH_DEADLINE_S
        self.stats["fetches"] += 1
        try:
            for _ in range(1000):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    async with session.get(f"{base}/v1/log?start={mirror.size}&namespace={ns}"
                                           ) as resp:
                        data = await _read_bounded(resp)
                        status = resp.status
                if status != 200:
                    raise OperatorError(f"witness answered HTTP {status}")
                # hashing a page and checking its head: off the event loop
                if not await asyncio.to_thread(self._apply, mirror, P.unpack(data)):
                    return
        except (TimeoutError, aiohttp.ClientError, OSError, OperatorError, B.TrustError,
                MirrorFull, ValueError) as exc:
            self.stats["fetch_failures"] += 1
            self._fetch_warn.warn("witness %s: log refresh failed (%s: %s); serving the log "
                                  "as held (size %d)", base, exc.__class__.__name__, exc,
                                  mirror.size)

    def _apply(self, mirror: LogMirror, page) -> bool:
        with self._lock:
            # a new trust file replaced the copy meanwhile
            if self._held is None or mirror is not self._held[1]:
                return False
            return mirror.apply_page(page)

    def _publish(self, changed: bool) -> None:
        """Make what the background holds the view requests see."""
        if self._held is None:
            return
        trust, mirror = self._held
        head = mirror.head
        v = self._view
        if not changed and v is not None and v.head == head and v.trust is trust:
            return
        epoch = trust["_epoch"]
        h = B.parse_head(head.sth)
        now = time.monotonic()
        if h.version == B.STH_V and h.namespace == trust["namespace"] and h.epoch > epoch \
                and v is not None and v.trust is trust:
            if self._superseded_since is None:
                self._superseded_since, self._superseded_said = now, False
                log.info("the witness's log holds %s epoch %d, this node's trust file epoch %d: "
                         "waiting for the operator's new trust file", h.namespace, h.epoch, epoch)
            if now - self._superseded_since < HOLD_SUPERSEDED_S:
                return  # keep the head that names our bundle a little longer
            if not self._superseded_said:
                self._superseded_said = True
                log.warning("serving superseded epoch %d of %s (the log holds epoch %d): clients "
                            "will skip this node until it gets the new trust file", epoch,
                            h.namespace, h.epoch)
        else:
            self._superseded_since = None
        index = trust["signed"]["leaf_index"]
        if not 0 <= index < head.size:
            self._file_warn.warn("%s: the bundle's statement (%d) is not in the log held (%d)",
                                 self.path, index, head.size)
            return
        inclusion = mirror.tree.inclusion_proof(index, head.size)
        self._view = _View(trust, mirror, head, inclusion, trust["namespace"], epoch)


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await resp.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_PAGE_BYTES:
            raise OperatorError(f"witness page larger than {MAX_PAGE_BYTES} bytes")
        chunks.append(chunk)


async def _sleep_or(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
    event.clear()
