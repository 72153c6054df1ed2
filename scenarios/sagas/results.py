"""A simulated run's outcome: its orders, history, final world, the checker's verdicts and counters, and the
rows it writes (the package docstring defines each metric)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reference_impl.sagas.invariants import World
from saaslab.history import CheckResult, History
from saaslab.results import ALL_TENANTS, Row
from scenarios.kernel import US_PER_S
from scenarios.kernel.metrics import RunKey
from scenarios.sagas.plan import PATTERN, PER_10K, Condition

if TYPE_CHECKING:
    from scenarios.sagas.lab import Saga, Stats

ANOMALY_CHECKS = ("terminal", "all_or_nothing")
"""Each flags orders (a pending order, a finished one with effects left or missing), never the same one twice:
`all_or_nothing` looks only at finished orders. Their violations are the run's anomalous orders."""
NAN = float("nan")


@dataclass
class RunResult:
    design: str
    load_point: float
    seed: int
    condition: Condition
    world: World
    history: History
    checks: list[CheckResult]
    stats: Stats
    sagas: list[Saga]
    end_us: int
    duration_s: float

    @property
    def valid(self) -> bool:
        return all(c.valid for c in self.checks)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    @property
    def anomalies(self) -> int:
        return sum(self.check(name).violations for name in ANOMALY_CHECKS)

    def share(self, status: str) -> float:
        return sum(1 for s in self.sagas if s.status == status) / len(self.sagas) if self.sagas else NAN

    def consistency_after_crashes(self) -> tuple[list[int], int]:
        """(per crash that caught orders pending, all of which finished: µs from the crash to the last of them
        finishing; how many orders caught by a crash never finished). A crash between sagas says nothing."""
        by_id = {s.order.id: s for s in self.sagas}
        took, unresolved = [], 0
        for at_us, pending in self.stats.crashes:
            finished = [by_id[i].finished_us for i in pending]
            never = sum(1 for f in finished if f is None)
            unresolved += never
            if pending and not never:
                took.append(max(f - at_us for f in finished if f is not None))
        return took, unresolved

    def throughput(self, duration_s: float) -> float:
        """Orders completed per second while orders arrived: a backlog (locks, a stalled pool) lowers it, a slow
        recovery after the arrivals does not."""
        window_us = duration_s * US_PER_S
        done = sum(1 for s in self.sagas if s.status == "completed" and s.finished_us is not None
                   and s.finished_us <= window_us)
        return done / duration_s

    def values(self) -> list[tuple[str, float, str]]:
        """(metric, value, unit) of the run, before the condition's suffix."""
        s, n = self.stats, len(self.sagas)
        took, unresolved = self.consistency_after_crashes()
        out: list[tuple[str, float, str]] = [
            ("orders", n, "orders"),
            ("rejected", s.rejected, "requests"),
            ("completed_share", self.share("completed"), "ratio"),
            ("compensated_share", self.share("compensated"), "ratio"),
            ("failed_share", self.share("failed"), "ratio"),
            ("unfinished", sum(1 for x in self.sagas if x.finished_us is None), "orders"),
            ("latency_p50", s.latency.percentile_ms(50), "ms"),
            ("latency_p99", s.latency.percentile_ms(99), "ms"),
            ("throughput", self.throughput(self.duration_s), "orders/s"),
            ("messages_per_saga", s.messages / n if n else NAN, "messages"),
            ("lock_hold_p50", s.lock_hold.percentile_ms(50), "ms"),
            ("lock_hold_p99", s.lock_hold.percentile_ms(99), "ms"),
            ("crashes", len(s.crashes), "count"),
            ("time_to_consistency", (sum(took) / len(took) / 1000) if took and not unresolved else NAN, "ms"),
            ("unresolved_after_crash", unresolved, "orders"),
            ("anomalies_per_10k", PER_10K * self.anomalies / n if n else NAN, "per_10k"),
        ]
        if self.design == "twopc":
            out += [("in_doubt_p50", s.in_doubt.percentile_ms(50), "ms"),
                    ("in_doubt_p99", s.in_doubt.percentile_ms(99), "ms"),
                    ("in_doubt_max", s.in_doubt_max_us / 1000 if s.in_doubt.count else NAN, "ms")]
        if self.design == "choreography":
            out += [("redeliveries", s.redeliveries, "count"),
                    ("events_per_saga", s.events / n if n else NAN, "messages")]
        out += [(c.name, float(c.valid), "bool") for c in self.checks]
        out.append(("checks_valid", float(self.valid), "bool"))
        return [(m, v if not (isinstance(v, float) and math.isinf(v)) else NAN, u) for m, v, u in out]

    def rows(self, run_id: str) -> list[Row]:
        key = RunKey(run_id=run_id, pattern=PATTERN, design=self.design, seed=self.seed, load_point=self.load_point)
        return [key.row(ALL_TENANTS, self.condition.metric(m), v, u) for m, v, u in self.values()]
