"""The failover report's view of one source: run-level rows by (design, write rate, condition, metric)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from saaslab import patterns
from saaslab.report import Cells, RunData, Summary, fmt_num
from saaslab.results import ALL_TENANTS
from scenarios.failover.plan import (
    DRILL_LAG_MS,
    DRILL_RATE,
    LOSS_TIMERS,
    PRESET_ORDER,
    Condition,
    drill_hold_s,
    split_metric,
    timers_named,
)

PATTERN = "failover"
DESIGN_ORDER = tuple(d.name for d in patterns.get(PATTERN).axes[0].designs)
UNSAFE = next(d.name for d in patterns.get(PATTERN).axes[0].designs if d.unsafe)
SAFE = tuple(d for d in DESIGN_ORDER if d != UNSAFE)
CHECKS = ("no_lost_writes", "no_split_brain", "no_stale_reads", "failed_writes_absent")
NO_LIVE = "no live run yet"
DRILL_HOLD_S = drill_hold_s(timers_named(LOSS_TIMERS))


def live_defaults(run: RunData) -> dict[str, object]:
    """What a live metric without its full condition ran under: run.json's `fault`, `hold_s`, `timers`, `lag_ms`,
    else a drill's (the lab's timers, held ttl + 2 loop_wait, a local replica's lag)."""
    p = run.parameters
    out: dict[str, object] = {"fault": str(p.get("fault") or "kill"), "timers": str(p.get("timers") or LOSS_TIMERS)}
    try:
        out["hold_s"] = float(p.get("hold_s") or DRILL_HOLD_S)
        out["lag_ms"] = float(p.get("lag_ms") or DRILL_LAG_MS)
    except (TypeError, ValueError):
        out["hold_s"], out["lag_ms"] = DRILL_HOLD_S, DRILL_LAG_MS
    return out


def seconds(s: Summary, suffix: str = " s") -> str:
    return "n/a" if not s.known else f"{fmt_num(s.mean)}{suffix}"


@dataclass
class View(Cells):
    """One source's run-level rows; a metric's key keeps its full condition (`writes_lost@kill/lab/lag1ms`)."""

    conditions: list[Condition] = field(default_factory=list)

    @classmethod
    def of(cls, run: RunData, defaults: dict[str, object] | None = None) -> View | None:
        """The rows of `run`; a live metric that leaves parts of its condition out takes `defaults`'. None if no
        row names a condition."""
        def named(metric: str) -> str:
            base, condition = split_metric(metric, **(defaults or {}))  # type: ignore[arg-type]
            if condition is None and defaults is not None:
                condition = Condition(str(defaults["fault"]), 0.0 if defaults["fault"] == "kill" else
                                      float(defaults["hold_s"]), str(defaults["timers"]),  # type: ignore[arg-type]
                                      float(defaults["lag_ms"]))  # type: ignore[arg-type]
            return metric if condition is None else condition.metric(base)

        view = cls.from_run(run, DESIGN_ORDER, keep=lambda r: r.tenant == ALL_TENANTS, metric=named)
        view.conditions = sorted({c for k in view.values if (c := split_metric(k[3])[1]) is not None})
        return view if view.values and view.conditions else None

    def at(self, design: str, rate: float, metric: str, condition: Condition) -> Summary:
        return self.get(design, rate, condition.metric(metric))

    def runs(self, design: str, metric: str, conditions: Iterable[Condition] | None = None) -> list[float]:
        """Every run's value of `metric` for `design`, over rates and the conditions (default: all)."""
        return [v for c in (self.conditions if conditions is None else conditions) for lp in self.load_points
                for v in self.seeds(design, lp, c.metric(metric)).values() if not math.isnan(v)]

    def held(self, design: str, check: str, conditions: Iterable[Condition] | None = None) -> tuple[int, int]:
        found = self.runs(design, check, conditions)
        return sum(1 for v in found if v >= 0.5), len(found)

    # --- the three experiments ---------------------------------------------------------------------
    @property
    def map_conditions(self) -> list[Condition]:
        return [c for c in self.conditions if c.fault in ("pause", "spike") and c.timers.startswith("ttl")]

    @property
    def map_ttls(self) -> list[float]:
        return sorted({float(c.timers[3:-1]) for c in self.map_conditions})

    def map_lengths(self, fault: str) -> list[float]:
        return sorted({c.hold_s for c in self.map_conditions if c.fault == fault})

    def map_cell(self, fault: str, ttl: float, length: float, metric: str = "false_failover") -> Summary:
        c = Condition(fault, length, f"ttl{ttl:g}s", 0.0)
        return self.get(self.map_design, 0.0, c.metric(metric))

    @property
    def map_design(self) -> str:
        return next((d for d in self.designs if self.has(d, 0.0)), DESIGN_ORDER[0])

    @property
    def presets(self) -> list[str]:
        found = {c.timers for c in self.conditions if c.fault == "kill" and not c.timers.startswith("ttl")}
        return [p for p in PRESET_ORDER if p in found] + sorted(found - set(PRESET_ORDER))

    def preset_condition(self, preset: str) -> Condition | None:
        return next((c for c in self.conditions if c.fault == "kill" and c.timers == preset
                     and any(self.at(d, lp, "unavailability", c).known for d in self.designs for lp in self.load_points)
                     and self._timer_rate(c) is not None), None)

    def _timer_rate(self, c: Condition) -> float | None:
        rates = [lp for lp in self.load_points if lp > 0 and any(self.at(d, lp, "downtime_per_year", c).known
                                                               for d in self.designs)]
        return rates[0] if rates else None

    def timer_cell(self, design: str, preset: str, metric: str) -> Summary:
        c = self.preset_condition(preset)
        rate = self._timer_rate(c) if c is not None else None
        return self.at(design, rate, metric, c) if c is not None and rate is not None else Summary(math.nan, math.nan, 0)

    @property
    def loss_conditions(self) -> list[Condition]:
        """The lost-writes experiment: the drills' timers at every lag and fault."""
        return [c for c in self.conditions if c.timers == LOSS_TIMERS and c.fault != "spike"
                and any(self.at(d, lp, "writes_lost", c).known for d in self.designs for lp in self.loss_rates)]

    @property
    def loss_rates(self) -> list[float]:
        """The write rates of the lost-writes experiment (not the timers experiment's own)."""
        timed = {k[1] for k in self.values if split_metric(k[3])[0] == "downtime_per_year"}
        return [lp for lp in self.load_points if lp > 0 and lp not in timed]

    @property
    def lags(self) -> list[float]:
        return sorted({c.lag_ms for c in self.loss_conditions})

    def loss_condition(self, fault: str, lag_ms: float) -> Condition | None:
        return next((c for c in self.loss_conditions if c.fault == fault and c.lag_ms == lag_ms), None)

    @property
    def drill_rate(self) -> float:
        """The write rate the drills' comparison reads: DRILL_RATE if swept, else the nearest."""
        rates = self.loss_rates or self.load_points
        return min(rates, key=lambda r: abs(r - DRILL_RATE))

    @property
    def drill_lag(self) -> float:
        return min(self.lags, key=lambda x: abs(x - DRILL_LAG_MS)) if self.lags else DRILL_LAG_MS
