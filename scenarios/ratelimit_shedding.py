"""Priority load shedding: as utilisation rises, does critical traffic keep flowing while lower classes are shed first?

Stripe's fleet usage load shedder, on the service's own decision (`core.LoadShedder`, the code
`reference_impl/ratelimit/shedding.py` runs per request). One service worker: `SLOTS` requests served
at once (the scheduler's slots), FIFO behind them; service times exponential with mean
`SERVICE_MEAN_MS`, so the worker serves `SLOTS / SERVICE_MEAN_MS` requests per ms at most. Requests of
the three route classes arrive as independent Poisson streams in the proportions `CLASS_MIX`, at a
total rate of `load_point` x that capacity (the offered utilisation). A client gives up after
`DEADLINE_MS`; the worker does not know and serves the request anyway (the wasted work that makes an
overloaded service fail everyone). The shedder counts what the middleware counts: requests admitted
and not yet answered, queued or in service.

Designs (`SHED_DESIGNS`), at the same capacity `CAPACITY` (requests in flight):

* `shed_priority`: Stripe's shedder, each class admitted up to its share of `CAPACITY`
  (`core.DEFAULT_SHARES_PCT`: critical 100%, default 80%, sheddable 50%).
* `shed_uniform`: one cap for every class (all shares 100%): a plain in-flight limit.
* `shed_none`: no shedding: every request queues.

Metrics of one (design, load point, seed), per class (tenant = `critical`, `default`, `sheddable`):

* `shed_offered` (requests)
* `shed_success_pct`: answered within the deadline (percent of the class's offered)
* `shed_shed_pct`: answered 503 `/load-shed` at once (percent of offered)
* `shed_timeout_pct`: admitted, but answered after the client gave up (percent of offered)
* `shed_latency_p99_ms`: p99 of the admitted requests' response times (ms)

and for the run (tenant "*"): `shed_order_held`, 1 when the classes were shed in priority order
(sheddable's shed share >= default's >= critical's; bool).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from reference_impl.ratelimit.core import DEFAULT_SHARES_PCT, ROUTE_CLASSES, LoadShedder
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row
from scenarios.kernel.metrics import RunKey

SHED_DESIGNS = ("shed_priority", "shed_uniform", "shed_none")
SHARES_PCT: Mapping[str, Mapping[str, int] | None] = {
    "shed_priority": DEFAULT_SHARES_PCT,
    "shed_uniform": dict.fromkeys(ROUTE_CLASSES, 100),
    "shed_none": None,
}
SLOTS = 8
"""Requests served at once: the scheduler's default slots (saaslab/settings.py `scheduler_slots`)."""
CAPACITY = 2 * SLOTS
"""Requests in flight (served or queued) at full capacity: a queue of at most one more request per slot."""
SERVICE_MEAN_MS = 10.0
DEADLINE_MS = 1000.0
CLASS_MIX: Mapping[str, float] = {"critical": 0.1, "default": 0.3, "sheddable": 0.6}
"""Share of the offered requests per class: payments are a small part of the traffic, reads most of it."""
DURATION_S = 20.0
QUICK_DURATION_S = 5.0


@dataclass
class ClassTally:
    offered: int = 0
    shed: int = 0
    on_time: int = 0
    late: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def pct(self, n: int) -> float:
        return 100.0 * n / self.offered if self.offered else float("nan")


def arrivals(load_point: float, seed: int, duration_s: float) -> list[tuple[float, str, float]]:
    """(arrival ms, class, service ms), sorted by arrival: Poisson per class, seeded per class."""
    capacity_per_ms = SLOTS / SERVICE_MEAN_MS
    out: list[tuple[float, str, float]] = []
    horizon_ms = duration_s * 1000
    for i, cls in enumerate(ROUTE_CLASSES):
        rng = np.random.default_rng([seed, 0x5BED, i])
        rate = load_point * capacity_per_ms * CLASS_MIX[cls]  # per ms
        n = rng.poisson(rate * horizon_ms)
        times = np.sort(rng.uniform(0.0, horizon_ms, size=n))
        services = rng.exponential(SERVICE_MEAN_MS, size=n)
        out += [(float(t), cls, float(s)) for t, s in zip(times, services, strict=True)]
    out.sort(key=lambda a: a[0])
    return out


def simulate(design: str, schedule: list[tuple[float, str, float]]) -> dict[str, ClassTally]:
    """Serve `schedule` on one worker under `design`; the tallies per class.

    FIFO over `SLOTS` servers: each admitted request starts when the earliest slot frees (or on
    arrival) and holds it for its service time; it is in flight from arrival to its answer.
    """
    shares = SHARES_PCT[design]
    shedder = LoadShedder(CAPACITY, dict(shares)) if shares is not None else None
    tallies = {cls: ClassTally() for cls in ROUTE_CLASSES}
    slots_free_at = [0.0] * SLOTS  # a heap: when each slot is next free
    answers_at: list[float] = []  # a heap: when each admitted request in flight is answered
    for arrival, cls, service in schedule:
        tally = tallies[cls]
        tally.offered += 1
        while answers_at and answers_at[0] <= arrival:
            heapq.heappop(answers_at)
        if shedder is not None and not shedder.admit(len(answers_at), cls):
            tally.shed += 1
            continue
        start = max(arrival, slots_free_at[0])
        answered = start + service
        heapq.heapreplace(slots_free_at, answered)
        heapq.heappush(answers_at, answered)
        response_ms = answered - arrival
        tally.latency.record_us(round(response_ms * 1000))
        if response_ms <= DEADLINE_MS:
            tally.on_time += 1
        else:
            tally.late += 1
    return tallies


def simulate_one(design: str, load_point: float, seed: int, *, quick: bool, run_id: str, pattern: str) -> list[Row]:
    """The module docstring's rows for one design, load point and seed."""
    key = RunKey(run_id=run_id, pattern=pattern, design=design, seed=seed, load_point=load_point)
    tallies = simulate(design, arrivals(load_point, seed, QUICK_DURATION_S if quick else DURATION_S))
    rows: list[Row] = []
    for cls, t in tallies.items():
        rows += [
            key.row(cls, "shed_offered", t.offered, "requests"),
            key.row(cls, "shed_success_pct", t.pct(t.on_time), "percent"),
            key.row(cls, "shed_shed_pct", t.pct(t.shed), "percent"),
            key.row(cls, "shed_timeout_pct", t.pct(t.late), "percent"),
            key.row(cls, "shed_latency_p99_ms", t.latency.percentile_ms(99), "ms"),
        ]
    shed = [tallies[c].pct(tallies[c].shed) for c in reversed(ROUTE_CLASSES)]  # sheddable first
    in_order = all(a >= b for a, b in itertools.pairwise(shed))
    rows.append(key.row(ALL_TENANTS, "shed_order_held", float(in_order), "bool"))
    return rows


def parameters(quick: bool) -> dict:
    """What run.json records of this experiment."""
    return {"designs": list(SHED_DESIGNS), "shares_pct": {d: dict(s) if s else None for d, s in SHARES_PCT.items()},
            "slots": SLOTS, "capacity": CAPACITY, "service_mean_ms": SERVICE_MEAN_MS, "deadline_ms": DEADLINE_MS,
            "class_mix": dict(CLASS_MIX), "duration_s": QUICK_DURATION_S if quick else DURATION_S}
