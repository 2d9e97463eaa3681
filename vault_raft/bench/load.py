"""Load generation: closed loop for capacity, open loop with intended start times for latency.

Latency is recorded in microseconds into HDR histograms.  In the open-loop
phase each request has an *intended* start time on a fixed schedule; its
latency is measured from that time, so a slow response delays (and is
charged to) the requests queued behind it -- no coordinated omission.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

Op = Callable[[], bool]
PERCENTILES = (50, 90, 99, 99.9)


def attempt(op: Op) -> bool:
    """Run one operation; an exception is a failed operation, not a crash of the load."""
    try:
        return bool(op())
    except Exception:
        return False


def new_hist() -> HdrHistogram:
    return HdrHistogram(1, 120_000_000, 3)  # 1 us .. 120 s, 3 significant digits


@dataclass
class Result:
    name: str
    concurrency: int
    mode: str  # "closed" or "open"
    duration: float
    ok: int = 0
    errors: int = 0
    hist: HdrHistogram = field(default_factory=new_hist)
    target_rate: float | None = None

    @property
    def throughput(self) -> float:
        return self.ok / self.duration if self.duration else 0.0

    def summary(self) -> dict:
        h = self.hist
        d = {"name": self.name, "concurrency": self.concurrency, "mode": self.mode,
             "duration_s": round(self.duration, 3), "ok": self.ok, "errors": self.errors,
             "throughput_per_s": round(self.throughput, 1)}
        if self.target_rate:
            d["target_rate_per_s"] = round(self.target_rate, 1)
        if h.get_total_count():
            for p in PERCENTILES:
                d[f"p{p}_ms"] = round(h.get_value_at_percentile(p) / 1000, 3)
            d["max_ms"] = round(h.get_max_value() / 1000, 3)
            d["mean_ms"] = round(h.get_mean_value() / 1000, 3)
        return d

    def cdf(self, points: int = 200) -> list[tuple[float, float]]:
        """(latency ms, fraction) pairs for a CDF picture."""
        out: list[tuple[float, float]] = []
        h = self.hist
        if not h.get_total_count():
            return out
        for i in range(points + 1):
            q = 100.0 * (1 - (1 - i / points) ** 3)  # denser near the tail
            q = min(q, 99.999)
            out.append((h.get_value_at_percentile(q) / 1000, q / 100))
        return out


class _StartLine:
    """Workers first make one request each, unmeasured (its connection opened,
    its path warm), and the clock starts when all have: 64 connections opened
    at the clock's start charged the first requests of an open loop with the
    nodes' accept work, and a check's slowest second was its first."""

    def __init__(self, workers: int, lead: float = 0.0):
        self._ready = threading.Barrier(workers + 1)
        self._go = threading.Event()
        self.lead = lead
        self.start = 0.0

    def warm(self, op: Op) -> float:
        """In a worker: the warm-up request, then wait for the start; returns it."""
        attempt(op)
        try:
            self._ready.wait(120)
        except threading.BrokenBarrierError:
            pass
        self._go.wait()
        return self.start

    def release(self) -> float:
        """In the caller, after starting the workers: the clock starts."""
        try:
            self._ready.wait(120)
        except threading.BrokenBarrierError:  # a warm-up hung: start without it
            self._ready.abort()
        self.start = time.perf_counter() + self.lead
        self._go.set()
        return self.start


def closed_loop(name: str, make_op: Callable[[int], Op], concurrency: int,
                duration: float) -> Result:
    """``concurrency`` workers, each issuing its next request as soon as the last returns."""
    res = Result(name, concurrency, "closed", duration)
    lock = threading.Lock()
    ops = [make_op(i) for i in range(concurrency)]
    line = _StartLine(concurrency)

    def worker(op: Op) -> None:
        local = new_hist()
        ok = err = 0
        stop_at = line.warm(op) + duration
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            good = attempt(op)
            t1 = time.perf_counter()
            if good:
                ok += 1
                local.record_value(max(1, int((t1 - t0) * 1e6)))
            else:
                err += 1
        with lock:
            res.ok += ok
            res.errors += err
            res.hist.add(local)

    threads = [threading.Thread(target=worker, args=(op,), daemon=True) for op in ops]
    for t in threads:
        t.start()
    start = line.release()
    for t in threads:
        t.join(duration + 60)
    res.duration = time.perf_counter() - start
    return res


def open_loop(name: str, make_op: Callable[[int], Op], concurrency: int, rate: float,
              duration: float, timeline: list | None = None) -> Result:
    """Requests scheduled at ``rate``/s in total, spread over ``concurrency`` workers;
    latency counted from each request's intended start.  ``timeline``, if given,
    receives (intended start in s from the beginning, latency in s) per success."""
    res = Result(name, concurrency, "open", duration, target_rate=rate)
    lock = threading.Lock()
    ops = [make_op(i) for i in range(concurrency)]
    interval = concurrency / rate  # per worker
    line = _StartLine(concurrency, lead=0.05)

    def worker(i: int, op: Op) -> None:
        local = new_hist()
        points = []
        ok = err = 0
        k = 0
        start = line.warm(op)
        stop_at = start + duration
        while True:
            intended = start + (i / concurrency) * interval + k * interval
            if intended >= stop_at:
                break
            now = time.perf_counter()
            if intended > now:
                time.sleep(intended - now)
            good = attempt(op)
            t1 = time.perf_counter()
            if good:
                ok += 1
                local.record_value(max(1, int((t1 - intended) * 1e6)))
                if timeline is not None:
                    points.append((intended - start, t1 - intended))
            else:
                err += 1
            k += 1
        with lock:
            res.ok += ok
            res.errors += err
            res.hist.add(local)
            if timeline is not None:
                timeline.extend(points)

    threads = [threading.Thread(target=worker, args=(i, op), daemon=True)
               for i, op in enumerate(ops)]
    for t in threads:
        t.start()
    start = line.release()
    for t in threads:
        t.join(duration + 120)
    res.duration = max(time.perf_counter() - start, 1e-9)
    return res


def timed(n: int, op: Op, name: str) -> Result:
    """``n`` sequential operations (concurrency 1), each timed."""
    res = Result(name, 1, "closed", 0.0)
    t_start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        if attempt(op):
            res.ok += 1
            res.hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
        else:
            res.errors += 1
    res.duration = time.perf_counter() - t_start
    return res


def timed_interleaved(n: int, ops: dict[str, Op]) -> dict[str, Result]:
    """``n`` rounds of one operation of each kind in turn (concurrency 1): a
    comparison that drift on the machine hits alike."""
    out = {name: Result(name, 1, "closed", 0.0) for name in ops}
    for _ in range(n):
        for name, op in ops.items():
            res = out[name]
            t0 = time.perf_counter()
            ok = attempt(op)
            took = time.perf_counter() - t0
            res.duration += took
            if ok:
                res.ok += 1
                res.hist.record_value(max(1, int(took * 1e6)))
            else:
                res.errors += 1
    return out


def slowest_second(timeline: list) -> dict | None:
    """The one-second window (by intended start) with the highest p99."""
    by: dict[int, list] = {}
    for t, lat in timeline:
        by.setdefault(int(t), []).append(lat)
    worst = None
    for sec, lats in sorted(by.items()):
        if len(lats) < 10:
            continue
        lats.sort()
        p99 = lats[min(len(lats) - 1, int(len(lats) * 0.99))]
        if worst is None or p99 > worst[1]:
            worst = (sec, p99, len(lats))
    if worst is None:
        return None
    return {"second": worst[0], "p99_ms": round(worst[1] * 1e3, 2), "n": worst[2]}
