"""The history of a fault-injection run: one JSON line per client operation or fault.

Operation records::

    {"kind": "op", "id": 17, "process": "attacker-2", "f": "begin", "user": "victim-3",
     "invoke": 12.501, "complete": 12.507, "outcome": "ok", "value": {...}, "node": "n2"}

``f`` is one of ``enroll``, ``begin`` (recover/start: a counted guess),
``complete`` (recover/finish: release), ``write`` (change_secret) and
``final`` (a right-code recovery after the cluster healed).  ``outcome`` is

* ``ok``: the operation took effect and ``value`` is what it returned;
* ``fail``: it certainly did not take effect (refused before any proposal,
  or an answer that says so);
* ``info``: unknown -- it may have taken effect, at any time after
  ``invoke`` (Jepsen's indeterminate operations); ``complete`` is then null.

Fault records: ``{"kind": "nemesis", "f": "partition", "value": ..., "start": t0, "end": t1}``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Op:
    id: int
    process: str
    f: str
    user: str
    invoke: float
    complete: float | None = None
    outcome: str = "pending"  # until finish(); "info" if it never finished
    value: Any = None
    node: str | None = None
    kind: str = "op"


@dataclass
class Fault:
    f: str
    value: Any
    start: float
    end: float | None = None
    kind: str = "nemesis"


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 6)

    def invoke(self, process: str, f: str, user: str, node: str | None = None,
               value: Any = None) -> Op:
        with self._lock:
            op = Op(len(self.ops), process, f, user, self.now(), node=node, value=value)
            self.ops.append(op)
            return op

    def finish(self, op: Op, outcome: str, value: Any = None) -> Op:
        assert outcome in ("ok", "fail", "info")
        op.outcome = outcome
        op.value = value if value is not None else op.value
        op.complete = self.now() if outcome != "info" else None
        return op

    def fault(self, f: str, value: Any) -> Fault:
        with self._lock:
            x = Fault(f, value, self.now())
            self.faults.append(x)
            return x

    def end_fault(self, x: Fault) -> None:
        x.end = self.now()

    def close_pending(self) -> None:
        """Operations still pending when the run ends have unknown outcomes."""
        for op in self.ops:
            if op.outcome == "pending":
                op.outcome, op.complete = "info", None

    def write(self, path: str) -> None:
        with open(path, "w") as fh:
            recs: list[Op | Fault] = [*self.ops, *self.faults]
            for rec in sorted(recs,
                              key=lambda r: r.invoke if isinstance(r, Op) else r.start):
                d = asdict(rec)
                fh.write(json.dumps(d, default=repr) + "\n")

    @classmethod
    def read(cls, path: str) -> History:
        h = cls()
        with open(path) as fh:
            for line in fh:
                d = json.loads(line)
                kind = d.pop("kind")
                if kind == "op":
                    h.ops.append(Op(**d))
                else:
                    h.faults.append(Fault(**d))
        h.ops.sort(key=lambda o: o.id)
        return h
