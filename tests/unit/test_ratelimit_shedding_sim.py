"""The load-shedding simulation (Stripe's question): under overload the critical class keeps flowing
while the lower classes are shed first, on the service's own `core.LoadShedder`."""

from __future__ import annotations

import statistics

from reference_impl.ratelimit.core import ROUTE_CLASSES
from saaslab.results import ALL_TENANTS
from scenarios.ratelimit_shedding import SHED_DESIGNS, arrivals, simulate, simulate_one

SEEDS = range(5)


def _mean(design: str, load_point: float, cls: str, metric: str) -> float:
    values = []
    for seed in SEEDS:
        rows = simulate_one(design, load_point, seed, quick=True, run_id="r", pattern="ratelimit")
        values += [r.value for r in rows if r.tenant == cls and r.metric == metric]
    assert len(values) == len(SEEDS)
    return statistics.mean(values)


def test_under_overload_critical_keeps_flowing_and_sheddable_is_shed_first() -> None:
    shed = {c: _mean("shed_priority", 2.0, c, "shed_shed_pct") for c in ROUTE_CLASSES}
    assert _mean("shed_priority", 2.0, "critical", "shed_success_pct") >= 95.0
    assert shed["sheddable"] > shed["default"] > shed["critical"]
    for seed in SEEDS:
        tallies = simulate("shed_priority", arrivals(2.0, seed, 5.0))
        assert tallies["critical"].on_time >= 0.95 * tallies["critical"].offered
        assert tallies["sheddable"].shed > tallies["default"].shed > tallies["critical"].shed
        assert all(t.late == 0 for t in tallies.values())  # what it admits, it answers in time


def test_without_priorities_every_class_loses_alike_and_without_shedding_everything_times_out() -> None:
    uniform = [_mean("shed_uniform", 2.0, c, "shed_success_pct") for c in ROUTE_CLASSES]
    assert max(uniform) - min(uniform) < 5.0 and max(uniform) < 60.0
    assert all(_mean("shed_none", 2.0, c, "shed_success_pct") < 40.0 for c in ROUTE_CLASSES)
    assert all(_mean("shed_none", 2.0, c, "shed_timeout_pct") > 60.0 for c in ROUTE_CLASSES)


def test_at_half_load_critical_and_default_traffic_is_never_shed_with_priorities() -> None:
    for design in SHED_DESIGNS:
        assert _mean(design, 0.5, "critical", "shed_success_pct") == 100.0
    assert _mean("shed_priority", 0.5, "default", "shed_shed_pct") == 0.0
    # One cap for all: a burst at the cap sheds whichever class arrives, default included.
    assert 0.0 < _mean("shed_uniform", 0.5, "default", "shed_shed_pct") < 1.0


def test_rows_are_reproducible_and_complete() -> None:
    first = simulate_one("shed_priority", 10.0, 3, quick=True, run_id="r", pattern="ratelimit")
    assert first == simulate_one("shed_priority", 10.0, 3, quick=True, run_id="r", pattern="ratelimit")
    metrics = {(r.tenant, r.metric, r.unit) for r in first}
    assert metrics == {(c, m, u) for c in ROUTE_CLASSES for m, u in (
        ("shed_offered", "requests"), ("shed_success_pct", "percent"), ("shed_shed_pct", "percent"),
        ("shed_timeout_pct", "percent"), ("shed_latency_p99_ms", "ms"))} | {(ALL_TENANTS, "shed_order_held", "bool")}
    assert next(r.value for r in first if r.metric == "shed_order_held") == 1.0
