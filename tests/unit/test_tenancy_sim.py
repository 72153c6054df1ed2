"""The noisy-neighbour simulation: reproducible, accountable, and with the expected physics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saaslab.live.tenancy import tenancy_plan
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings
from saaslab.stats import mean_ci95
from scenarios.kernel.sweep import sweep
from scenarios.kernel.workload import arrivals
from scenarios.tenancy import (
    BURST_LENGTH_S,
    BURST_START_S,
    DESIGNS,
    LOAD_POINTS,
    NOISY,
    QUIET,
    SERVICE_MS,
    SLOT_HOLD_MS,
    SOLO_DURATION_S,
    _simulate,
    noisy_neighbour,
    replay,
    run,
    simulate_one,
    solo_baseline,
)

TENANT_METRICS = {"latency_p50": "ms", "latency_p99": "ms", "offered": "requests", "completed": "requests",
                  "goodput": "rps"}
RUN_METRICS = {"quiet_p99": "ms", "noisy_p99": "ms", "solo_quiet_p99": "ms", "quiet_p99_vs_solo": "ratio",
               "jain_index": "ratio", "goodput": "rps"}


def _run_metrics(design: str, load_point: float, seeds: range) -> dict[str, float]:
    """Mean over seeds of each per-run metric."""
    values: dict[str, list[float]] = {}
    for seed in seeds:
        for r in simulate_one(design, load_point, seed, run_id="r"):
            if r.tenant == ALL_TENANTS:
                values.setdefault(r.metric, []).append(r.value)
    return {m: mean_ci95(v)[0] for m, v in values.items()}


@pytest.mark.parametrize("design", DESIGNS)
def test_a_seed_reproduces_its_rows_exactly(design: str) -> None:
    rows = simulate_one(design, 0.5, 3, run_id="r")
    assert rows == simulate_one(design, 0.5, 3, run_id="r")
    assert rows != simulate_one(design, 0.5, 4, run_id="r")


def test_rows_follow_the_contract() -> None:
    rows = simulate_one("wfq", 0.3, 0, run_id="run-1")
    per_tenant = {(r.tenant, r.metric): r.unit for r in rows if r.tenant != ALL_TENANTS}
    assert per_tenant == {(t, m): u for t in (NOISY, *QUIET) for m, u in TENANT_METRICS.items()}
    assert {r.metric: r.unit for r in rows if r.tenant == ALL_TENANTS} == RUN_METRICS
    assert len(rows) == 5 * len(TENANT_METRICS) + len(RUN_METRICS)
    assert {(r.run_id, r.source, r.pattern, r.design, r.seed, r.load_point) for r in rows} == {
        ("run-1", "sim", "tenancy", "wfq", 0, 0.3)}
    by = {(r.tenant, r.metric): r.value for r in rows}
    assert by[(ALL_TENANTS, "quiet_p99_vs_solo")] == pytest.approx(
        by[(ALL_TENANTS, "quiet_p99")] / by[(ALL_TENANTS, "solo_quiet_p99")])
    assert by[(ALL_TENANTS, "goodput")] == pytest.approx(sum(by[(t, "goodput")] for t in (NOISY, *QUIET)))
    assert by[(ALL_TENANTS, "noisy_p99")] == by[(NOISY, "latency_p99")]
    assert 0.2 <= by[(ALL_TENANTS, "jain_index")] <= 1.0


@pytest.mark.parametrize("design", DESIGNS)
def test_every_arrival_is_offered_and_unfinished_work_is_not_completed(design: str) -> None:
    wl = noisy_neighbour(0.5)
    sched = arrivals(wl, 1)
    drained = replay(wl, design, 1)
    assert sum(drained[t].offered for t in drained.tenants) == len(sched)
    assert all(drained[t].completed == drained[t].offered for t in drained.tenants)
    # Stopped right as the burst ends, with no time to drain: its backlog is lost, not counted.
    short = noisy_neighbour(0.5, duration_s=BURST_START_S + BURST_LENGTH_S)
    cut = replay(short, design, 1, drain_s=0.0)
    assert sum(cut[t].offered for t in cut.tenants) == len(arrivals(short, 1))
    assert cut[NOISY].offered - cut[NOISY].completed > 100


@pytest.mark.parametrize("quick", [True, False])
def test_the_live_run_replays_the_simulations_workload_and_solo_baseline(quick: bool) -> None:
    plan = tenancy_plan(Settings(), quick=quick, host=None, rate=None, duration=None)
    for lp in plan.load_points:
        assert noisy_neighbour(lp, **plan.burst) == noisy_neighbour(lp)
        assert noisy_neighbour(lp, **plan.solo) == solo_baseline(lp)
    # The solo baseline's quiet traffic is the first SOLO_DURATION_S of the burst run's.
    quiet = set(QUIET)
    burst_quiet = [a for a in arrivals(noisy_neighbour(0.5), 1) if a[1] in quiet]
    solo_quiet = [a for a in arrivals(solo_baseline(0.5), 1) if a[1] in quiet]
    assert solo_quiet == [a for a in burst_quiet if a[0] < SOLO_DURATION_S * 1e6] and len(solo_quiet) > 400


@pytest.mark.parametrize("design", DESIGNS)
def test_latency_outside_the_slot_adds_to_every_request_but_costs_no_capacity(design: str) -> None:
    wl = noisy_neighbour(0.5)
    inside = replay(wl, design, 2, slot_overhead_ms=0.0, outside_slot_ms=0.0)
    outside = replay(wl, design, 2, slot_overhead_ms=0.0, outside_slot_ms=6.0)
    for t in (NOISY, *QUIET):
        assert (outside[t].offered, outside[t].completed) == (inside[t].offered, inside[t].completed)
        # Queueing is unchanged, so every latency moves by exactly 6 ms (to the histogram's 3 digits).
        for q in (0, 50, 99, 100):
            assert outside[t].latency.percentile_ms(q) == pytest.approx(inside[t].latency.percentile_ms(q) + 6.0,
                                                                        rel=1e-3, abs=0.05)
    # With deterministic service and no queue, a request's latency is exactly its slot hold.
    idle = replay(noisy_neighbour(0.01, burst=False), design, 2, slot_overhead_ms=0.0, outside_slot_ms=0.0)
    assert idle[QUIET[0]].latency.percentile_ms(100) == pytest.approx(SERVICE_MS, abs=0.02)


def test_slot_overhead_eats_capacity() -> None:
    wl = noisy_neighbour(0.5)
    lean = replay(wl, "fifo", 2, slot_overhead_ms=0.0, outside_slot_ms=0.0)
    slow = replay(wl, "fifo", 2, slot_overhead_ms=SLOT_HOLD_MS - SERVICE_MS, outside_slot_ms=0.0)
    assert slow.pooled(QUIET).percentile_ms(99) > lean.pooled(QUIET).percentile_ms(99) + 100


def test_at_half_load_fifo_lets_the_burst_reach_the_quiet_tenants() -> None:
    fifo, bulkhead, wfq = (_run_metrics(d, 0.5, range(2)) for d in ("fifo", "bulkhead", "wfq"))
    assert fifo["quiet_p99_vs_solo"] > 10 * max(bulkhead["quiet_p99_vs_solo"], wfq["quiet_p99_vs_solo"])
    assert wfq["quiet_p99_vs_solo"] < bulkhead["quiet_p99_vs_solo"]
    assert fifo["goodput"] < min(bulkhead["goodput"], wfq["goodput"])
    # FIFO's queue is shared: the noisy tenant waits as long as everyone else.
    assert fifo["noisy_p99"] == pytest.approx(fifo["quiet_p99"], rel=0.2)
    assert wfq["noisy_p99"] > 20 * wfq["quiet_p99"]


def test_at_high_load_a_two_slot_bulkhead_is_not_enough_but_wfq_is() -> None:
    bulkhead, wfq = (_run_metrics(d, 0.7, range(1)) for d in ("bulkhead", "wfq"))
    assert bulkhead["quiet_p99_vs_solo"] > 5 * wfq["quiet_p99_vs_solo"]


def test_sweep_of_the_scenario_does_not_depend_on_jobs() -> None:
    grid = {"designs": ("fifo", "wfq"), "load_points": (0.5,), "seeds": (0, 1),
            "params": {"run_id": "r", "duration_s": 8.0}}
    assert sweep(_simulate, **grid, jobs=1) == sweep(_simulate, **grid, jobs=2)  # type: ignore[arg-type]


def test_run_writes_rows_and_parameters(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    csv_path = run(tmp_path, quick=True, seeds=1, jobs=2, progress=lambda d, n: calls.append((d, n)))
    assert csv_path == tmp_path / "sim" / "results.csv"
    rows = read_rows(csv_path)
    tasks = len(DESIGNS) * len(LOAD_POINTS)
    assert len(rows) == tasks * (5 * len(TENANT_METRICS) + len(RUN_METRICS))
    assert calls[-1] == (tasks, tasks) and len(calls) == tasks
    assert len({r.run_id for r in rows}) == 1
    meta = json.loads((tmp_path / "sim" / "run.json").read_text())
    assert meta["run_id"] == rows[0].run_id and meta["source"] == "sim" and meta["pattern"] == "tenancy"
    p = meta["parameters"]
    assert (p["designs"], p["load_points"], p["seeds"], p["quick"]) == (list(DESIGNS), list(LOAD_POINTS), [0], True)
    assert p["workload"]["slots"] == 4 and p["slo_ms"] == 500.0
    assert (p["slot_hold_ms"], p["solo_workload"]["duration_s"]) == (SLOT_HOLD_MS, SOLO_DURATION_S)
