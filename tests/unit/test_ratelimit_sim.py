"""The rate-limiting simulation: reproducible, complete rows, and the orderings the report states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saaslab.results import ALL_TENANTS, Row, read_rows
from scenarios import ratelimit
from scenarios.kernel.sweep import sweep
from scenarios.kernel.workload import arrivals
from scenarios.ratelimit import (
    DESIGNS,
    HEAVY,
    LOAD_POINTS,
    NOISY,
    POLICY,
    QUIET,
    _simulate,
    boundary_burst,
    exact_admitted,
    heavy_tenant,
    noisy_neighbour,
    race_history,
    replay,
    run,
    simulate_one,
)
from scenarios.ratelimit_shedding import SHED_DESIGNS

RUN_METRICS = {
    "accuracy_offered": "requests", "accuracy_admitted": "requests", "accuracy_admitted_vs_exact_pct": "percent",
    "accuracy_rejected_pct": "percent", "accuracy_false_admit_pct": "percent",
    "accuracy_false_reject_pct": "percent", "accuracy_max_window_ratio": "x_limit",
    "memory_state_bytes_mean": "bytes", "memory_state_bytes_max": "bytes", "boundary_burst_ratio": "x_limit",
    "neighbour_noisy_rejected_pct": "percent", "neighbour_quiet_rejected_pct": "percent",
    "neighbour_noisy_admitted_x_quota": "x_limit",
    "cluster_false_admit_pct": "percent", "cluster_false_reject_pct": "percent",
    "cluster_max_window_ratio": "x_limit", "skew_false_admit_pct": "percent",
    "skew_false_reject_pct": "percent", "skew_max_window_ratio": "x_limit",
    "race_admitted": "requests", "race_admitted_ratio": "x_limit", "race_no_over_admission": "bool",
}
TENANT_METRICS = {"neighbour_rejected_pct": "percent", "neighbour_admitted_x_quota": "x_limit"}
STRICT = ("fixed_window", "sliding_log", "sliding_counter", "token_bucket", "gcra")


def _by_metric(rows: list[Row]) -> dict[str, float]:
    return {r.metric: r.value for r in rows if r.tenant == ALL_TENANTS}


@pytest.mark.parametrize("design", ["sliding_counter", "naive"])
def test_a_seed_reproduces_its_rows_exactly(design: str) -> None:
    rows = simulate_one(design, 2.0, 3, quick=True, run_id="r")
    assert rows == simulate_one(design, 2.0, 3, quick=True, run_id="r")
    assert rows != simulate_one(design, 2.0, 4, quick=True, run_id="r")


def test_rows_follow_the_contract_and_the_module_docstring() -> None:
    rows = simulate_one("gcra", 1.0, 0, quick=True, run_id="run-1")
    assert {r.metric: r.unit for r in rows if r.tenant == ALL_TENANTS} == RUN_METRICS
    per_tenant = {(r.tenant, r.metric): r.unit for r in rows if r.tenant != ALL_TENANTS}
    assert per_tenant == {(t, m): u for t in (NOISY, *QUIET) for m, u in TENANT_METRICS.items()}
    assert len(rows) == len(RUN_METRICS) + 5 * len(TENANT_METRICS)
    assert {(r.run_id, r.source, r.pattern, r.design, r.seed, r.load_point) for r in rows} == {
        ("run-1", "sim", "ratelimit", "gcra", 0, 1.0)}
    assert all(f"`{m}`" in (ratelimit.__doc__ or "") for m in [*RUN_METRICS, *TENANT_METRICS])


def test_the_fixed_window_doubles_at_a_boundary_and_the_log_never_does() -> None:
    burst = {d: boundary_burst(d, 10.0, seed=0) / POLICY.requests for d in DESIGNS}
    assert burst["fixed_window"] == burst["naive"] == 2.0
    assert burst["sliding_log"] == 1.0
    # The others allow what refills (or the decayed estimate) in the 0.2-window flood.
    assert 1.0 < burst["sliding_counter"] < burst["token_bucket"] == burst["gcra"] <= 1.2
    assert all(boundary_burst(d, 0.5, seed=0) == 50 for d in DESIGNS)


def test_accuracy_memory_and_neighbours_order_as_expected() -> None:
    schedule = arrivals(heavy_tenant(2.0, duration_s=10.0), seed=2)
    tallies = {d: replay(d, schedule)[HEAVY] for d in STRICT}
    exact = exact_admitted(schedule)
    log = tallies["sliding_log"]
    assert (log.false_admits, log.false_rejects, log.admitted) == (0, 0, exact)
    assert log.max_window_admits == POLICY.requests
    for d in ("fixed_window", "token_bucket", "gcra"):
        assert tallies[d].false_admits > 0 and tallies[d].false_rejects == 0 and tallies[d].admitted > exact
    assert tallies["sliding_counter"].false_rejects > 0
    # One timestamp per admitted request against a few integers (two or three packed int64s take
    # Redis the same allocation).
    mean_bytes = {d: t.bytes_sum / t.offered for d, t in tallies.items()}
    assert mean_bytes["gcra"] < mean_bytes["fixed_window"] <= mean_bytes["sliding_counter"]
    assert mean_bytes["sliding_counter"] <= mean_bytes["token_bucket"] < mean_bytes["sliding_log"] / 5
    # Limits are per tenant: a noisy neighbour at 10x never costs the quiet tenants a request.
    nn = replay("gcra", arrivals(noisy_neighbour(10.0, duration_s=5.0), seed=0))
    assert all(nn[q].admitted == nn[q].offered for q in QUIET)
    assert nn[NOISY].admitted < nn[NOISY].offered / 5


def test_only_the_naive_design_over_admits_in_the_race() -> None:
    for design in DESIGNS:
        ops = [op for op in race_history(design, 4.0, seed=1).ops if op.type == "ok"]
        admitted = sum(op.value["allowed"] for op in ops)
        assert len(ops) == 200
        if design == "naive":
            assert admitted > 2 * 50
        else:
            assert admitted == 50


def test_sweep_of_the_scenario_does_not_depend_on_jobs() -> None:
    grid = {"designs": ("fixed_window", "naive"), "load_points": (0.5,), "seeds": (0, 1),
            "params": {"run_id": "r", "quick": True}}
    assert sweep(_simulate, **grid, jobs=1) == sweep(_simulate, **grid, jobs=2)  # type: ignore[arg-type]


def test_run_writes_rows_and_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shorter workloads keep this test fast; the sweep's shape is what it checks.
    for experiment, seconds in {"accuracy": 2.0, "neighbour": 2.0, "skew": 1.0}.items():
        monkeypatch.setitem(ratelimit.QUICK_DURATIONS_S, experiment, seconds)
    calls: list[tuple[int, int]] = []
    csv_path = run(tmp_path, quick=True, seeds=1, jobs=2, progress=lambda d, n: calls.append((d, n)))
    assert csv_path == tmp_path / "sim" / "results.csv"
    rows = read_rows(csv_path)
    limiter_tasks = len(DESIGNS) * len(LOAD_POINTS)
    shed_tasks = len(SHED_DESIGNS) * len(LOAD_POINTS)
    tasks = limiter_tasks + shed_tasks
    assert len(rows) == limiter_tasks * (len(RUN_METRICS) + 5 * len(TENANT_METRICS)) + shed_tasks * 16
    # The algorithms' rows first, as they were before the shedder's were appended.
    assert {r.design for r in rows[:limiter_tasks * (len(RUN_METRICS) + 5 * len(TENANT_METRICS))]} == set(DESIGNS)
    assert calls[-1] == (tasks, tasks) and len(calls) == tasks
    meta = json.loads((tmp_path / "sim" / "run.json").read_text())
    assert meta["run_id"] == rows[0].run_id and meta["pattern"] == "ratelimit" and meta["source"] == "sim"
    p = meta["parameters"]
    assert (p["designs"], p["load_points"], p["seeds"], p["quick"]) == (list(DESIGNS), list(LOAD_POINTS), [0], True)
    assert p["policy"] == {"requests": 100, "window_s": 1.0} and p["durations_s"]["skew"] == 1.0
    assert p["shedding"]["designs"] == list(SHED_DESIGNS) and p["shedding"]["duration_s"] == 5.0
    naive_race = [r.value for r in rows if r.design == "naive" and r.metric == "race_no_over_admission"]
    strict_race = [r.value for r in rows if r.design != "naive" and r.metric == "race_no_over_admission"]
    assert naive_race == [1.0, 1.0, 0.0, 0.0] and set(strict_race) == {1.0}
