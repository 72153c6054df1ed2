"""Workloads: who sends requests, and when. One description drives both SimPy and Locust.

A `Workload` is a set of tenants (plan, weight, base rate, optional bursts) plus an arrival
process. `arrivals(workload, seed, duration_s)` turns it into a concrete, seeded schedule of
(time_us, tenant) pairs. The simulation replays that schedule against modelled servers; the
open-model load harness replays the same schedule against the live service, so both faces see
the very same traffic.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ArrivalProcess = Literal["poisson", "bursty", "uniform"]


@dataclass(frozen=True)
class Burst:
    """Between `start_s` and `start_s + length_s` the tenant sends `multiplier` times its rate."""

    start_s: float
    length_s: float
    multiplier: float

    def factor(self, t_s: float) -> float:
        return self.multiplier if self.start_s <= t_s < self.start_s + self.length_s else 1.0


@dataclass(frozen=True)
class TenantSpec:
    name: str
    plan: str = "pro"
    rate: float = 10.0
    """Base arrival rate in requests per second."""
    bursts: tuple[Burst, ...] = ()

    def rate_at(self, t_s: float) -> float:
        f = 1.0
        for b in self.bursts:
            f *= b.factor(t_s)
        return self.rate * f


@dataclass(frozen=True)
class Workload:
    tenants: tuple[TenantSpec, ...]
    process: ArrivalProcess = "poisson"
    duration_s: float = 10.0
    # For "bursty": on/off modulation, mean on and off period lengths in seconds.
    on_s: float = 0.5
    off_s: float = 0.5
    params: dict = field(default_factory=dict)

    def total_rate(self) -> float:
        return sum(t.rate for t in self.tenants)

    def tenant(self, name: str) -> TenantSpec:
        return next(t for t in self.tenants if t.name == name)


def _tenant_arrivals(spec: TenantSpec, wl: Workload, rng: np.random.Generator, duration_s: float
                     ) -> Iterator[float]:
    """Arrival times (seconds) of one tenant: a non-homogeneous Poisson process by thinning."""
    peak = spec.rate * max([1.0, *[b.multiplier for b in spec.bursts]])
    if wl.process == "bursty":
        peak *= (wl.on_s + wl.off_s) / wl.on_s
    if peak <= 0:
        return
    if wl.process == "uniform":
        # Evenly spaced at the current rate: deterministic spacing, handy for calibration.
        t = 0.0
        while t < duration_s:
            r = spec.rate_at(t)
            t += 1.0 / r if r > 0 else duration_s
            if t < duration_s:
                yield t
        return
    on_until, off_until = _next_on_period(rng, wl, 0.0) if wl.process == "bursty" else (duration_s, duration_s)
    t = 0.0
    while True:
        t += rng.exponential(1.0 / peak)
        if t >= duration_s:
            return
        rate = spec.rate_at(t)
        if wl.process == "bursty":
            while t >= off_until:
                on_until, off_until = _next_on_period(rng, wl, off_until)
            rate = rate * (wl.on_s + wl.off_s) / wl.on_s if t < on_until else 0.0
        if rng.random() * peak < rate:
            yield t


def _next_on_period(rng: np.random.Generator, wl: Workload, start: float) -> tuple[float, float]:
    on = rng.exponential(wl.on_s)
    off = rng.exponential(wl.off_s)
    return start + on, start + on + off


def arrivals(wl: Workload, seed: int, duration_s: float | None = None) -> list[tuple[int, str]]:
    """The whole seeded schedule, sorted: (time in integer microseconds, tenant name)."""
    duration = wl.duration_s if duration_s is None else duration_s
    streams = []
    for i, spec in enumerate(wl.tenants):
        rng = np.random.default_rng([seed, i])
        streams.append([(int(t * 1e6), spec.name) for t in _tenant_arrivals(spec, wl, rng, duration)])
    return list(heapq.merge(*streams))


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    """Shares of n tenants under Zipf skew s (the first tenant is the heaviest); they sum to 1."""
    raw = np.array([1.0 / (k**s) for k in range(1, n + 1)])
    return list(raw / raw.sum())


def zipf_tenants(n: int, total_rate: float, s: float = 1.1, plan: str = "pro") -> tuple[TenantSpec, ...]:
    return tuple(TenantSpec(name=f"t{k:03d}", plan=plan, rate=total_rate * w)
                 for k, w in enumerate(zipf_weights(n, s)))
