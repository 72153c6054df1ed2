"""What a simulated run measures, per tenant, in the same form a live run reports it.

Latencies go into `saaslab.results.LatencyHistogram` (integer µs), so a simulated p99 and a
measured p99 come from the same percentile code. Counters: requests offered, completed, and
completed within the SLO (the numerator of goodput). `RunKey.row` stamps the tidy result rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from saaslab.results import LatencyHistogram, Row, Source


@dataclass
class TenantStats:
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    offered: int = 0
    completed: int = 0
    within_slo: int = 0

    def normalised_service(self) -> float:
        """Share of offered requests served within the SLO (goodput over offered rate), in [0, 1]."""
        return self.within_slo / self.offered if self.offered else float("nan")


class Metrics:
    """Counters and latency histograms of one simulated run, keyed by tenant."""

    def __init__(self, slo_us: int, tenants: Iterable[str] = ()) -> None:
        self.slo_us = slo_us
        self._stats: dict[str, TenantStats] = {t: TenantStats() for t in tenants}

    def __getitem__(self, tenant: str) -> TenantStats:
        stats = self._stats.get(tenant)
        if stats is None:
            stats = self._stats[tenant] = TenantStats()
        return stats

    @property
    def tenants(self) -> list[str]:
        """Tenants given at construction, then in the order they first appeared."""
        return list(self._stats)

    def offer(self, tenant: str) -> None:
        self[tenant].offered += 1

    def complete(self, tenant: str, latency_us: int) -> None:
        s = self[tenant]
        s.completed += 1
        if latency_us <= self.slo_us:
            s.within_slo += 1
        s.latency.record_us(latency_us)

    def pooled(self, tenants: Iterable[str]) -> LatencyHistogram:
        h = LatencyHistogram()
        for t in tenants:
            h.add(self[t].latency)
        return h

    def goodput_rps(self, tenants: Iterable[str], duration_s: float) -> float:
        """Requests completed within the SLO per second of offered traffic."""
        return sum(self[t].within_slo for t in tenants) / duration_s


@dataclass(frozen=True)
class RunKey:
    """The identifying columns shared by every row of one (design, load point, seed) run."""

    run_id: str
    pattern: str
    design: str
    seed: int
    load_point: float
    source: Source = "sim"

    def row(self, tenant: str, metric: str, value: float, unit: str) -> Row:
        return Row(run_id=self.run_id, source=self.source, pattern=self.pattern, design=self.design,
                   seed=self.seed, load_point=self.load_point, tenant=tenant, metric=metric,
                   value=float(value), unit=unit)

    def tenant_rows(self, metrics: Metrics, duration_s: float) -> list[Row]:
        """Per tenant: latency_p50 and latency_p99 (ms), offered, completed, goodput (rps)."""
        rows = []
        for t in metrics.tenants:
            s = metrics[t]
            rows += [
                self.row(t, "latency_p50", s.latency.percentile_ms(50), "ms"),
                self.row(t, "latency_p99", s.latency.percentile_ms(99), "ms"),
                self.row(t, "offered", s.offered, "requests"),
                self.row(t, "completed", s.completed, "requests"),
                self.row(t, "goodput", metrics.goodput_rps([t], duration_s), "rps"),
            ]
        return rows
