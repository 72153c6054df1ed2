"""A simulated run's outcome: its counters, history, ledger and verdicts, and the rows it writes (the
package docstring defines each metric)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from reference_impl.idempotency.payments import SUCCEEDED, LedgerState
from saaslab.history import CheckResult, History
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row
from scenarios.idempotency.plan import PATTERN, PER_10K
from scenarios.kernel.metrics import RunKey


@dataclass
class Stats:
    payments: int = 0
    chains: int = 0
    attempts: int = 0
    conflicts: int = 0
    replays: int = 0
    timeouts: int = 0
    gave_up: int = 0
    reconciled: int = 0
    """Payments the reconcile pass brought to a final answer."""
    crashes: int = 0
    completed_by_completer: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    payment_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass
class RunResult:
    """One run: its history, the final ledger, the checker's verdicts and the counters."""

    design: str
    load_point: float
    seed: int
    history: History
    ledger: LedgerState
    checks: list[CheckResult]
    stats: Stats
    end_us: int

    @property
    def valid(self) -> bool:
        return all(c.valid for c in self.checks)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def extra_effects(self) -> int:
        """Per key, the larger of (succeeded charges - 1) and (payment rows - 1), when positive, summed."""
        charges = Counter(c.reference for c in self.ledger.charges if c.status == SUCCEEDED)
        payments = Counter(p.idempotency_key for p in self.ledger.payments)
        return sum(max(0, charges[k] - 1, payments[k] - 1) for k in set(charges) | set(payments))

    def per_10k(self, n: int) -> float:
        return PER_10K * n / self.stats.payments if self.stats.payments else float("nan")

    def rows(self, run_id: str) -> list[Row]:
        s = self.stats
        key = RunKey(run_id=run_id, pattern=PATTERN, design=self.design, seed=self.seed, load_point=self.load_point)
        attempts = s.attempts or 1

        def pct(n: int, of: int) -> float:
            return 100.0 * n / of if of else float("nan")

        values: list[tuple[str, float, str]] = [
            ("payments", s.payments, "requests"),
            ("attempts", s.attempts, "requests"),
            ("duplicates_per_10k", self.per_10k(self.extra_effects()), "per_10k"),
            ("effect_violations_per_10k", self.per_10k(self.check("exactly_one_effect").violations), "per_10k"),
            ("orphans_per_10k", self.per_10k(self.check("no_orphan_charges").violations), "per_10k"),
            ("replay_mismatch", self.check("replays_match_first").violations, "requests"),
            ("conflicts_pct", pct(s.conflicts, attempts), "percent"),
            ("replays_pct", pct(s.replays, attempts), "percent"),
            ("timeouts_pct", pct(s.timeouts, attempts), "percent"),
            ("retries_per_request", (s.attempts - s.chains) / s.payments if s.payments else float("nan"), "ratio"),
            ("gave_up_pct", pct(s.gave_up, s.payments), "percent"),
            ("latency_p50", s.latency.percentile_ms(50), "ms"),
            ("latency_p99", s.latency.percentile_ms(99), "ms"),
            ("payment_latency_p99", s.payment_latency.percentile_ms(99), "ms"),
            ("crashes", s.crashes, "count"),
            ("completed_by_completer_per_10k", self.per_10k(s.completed_by_completer), "per_10k"),
            *((c.name, float(c.valid), "bool") for c in self.checks),
            ("checks_valid", float(self.valid), "bool"),
        ]
        return [key.row(ALL_TENANTS, metric, value, unit) for metric, value, unit in values]
