"""The live face of rate limiting: a quick load run with the unsafe design in the same harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reference_impl.ratelimit.invariants import check_run, no_over_admission
from saaslab import patterns
from saaslab.history import load
from saaslab.live.ratelimit import QUICK_DESIGNS, WORKERS
from saaslab.report import load_pattern
from saaslab.reports.ratelimit import build
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings
from scenarios import ratelimit as scenario
from scenarios.kernel.workload import arrivals

pytestmark = pytest.mark.e2e

LOAD_POINT = 10.0
TENANTS = (scenario.NOISY, *scenario.QUIET)
LIMIT = scenario.LIVE_RACE_POLICY.requests
RACE = scenario.LIVE_RACE_REQUESTS


def test_quick_live_run_matches_the_simulation_and_the_checker_catches_naive(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ratelimit"
    csv_path = patterns.get("ratelimit").module("live").run(settings, out, quick=True, unsafe=True)
    assert csv_path == out / "live" / "results.csv"

    # Rows with the report's schema, for the quick designs at load point 10.
    rows = read_rows(csv_path)
    assert {r.source for r in rows} == {"live"} and {r.load_point for r in rows} == {LOAD_POINT}
    assert {r.design for r in rows} == set(QUICK_DESIGNS)
    units = {(r.tenant, r.metric): r.unit for r in rows}
    for tenant in (*TENANTS, ALL_TENANTS):
        assert units[(tenant, "rejected_rate")] == "fraction" and units[(tenant, "latency_p99")] == "ms"

    # The very schedule the simulation decides, every request answered and decided.
    duration_s = scenario.QUICK_DURATIONS_S["neighbour"]
    workload = scenario.noisy_neighbour(LOAD_POINT, duration_s=duration_s, policy=scenario.NEIGHBOUR_POLICY)
    offered = Counter(tenant for _, tenant in arrivals(workload, seed=1))
    for design in QUICK_DESIGNS:
        value = {(r.tenant, r.metric): r.value for r in rows if r.design == design}
        assert {t: value[(t, "offered")] for t in TENANTS} == dict(offered)
        for metric in ("dropped", "errors", "timeouts", "undecided"):
            assert value[(ALL_TENANTS, metric)] == 0, (design, metric)
        assert value[(ALL_TENANTS, "sent_rate")] == pytest.approx(value[(ALL_TENANTS, "target_rate")], rel=0.02)
        for t in TENANTS:
            assert value[(t, "admitted")] + value[(t, "rejected")] == offered[t]
            assert value[(t, "latency_p99")] > 0
        # Limits are per tenant: the quiet ones were never refused while the noisy one mostly was.
        assert all(value[(q, "rejected_rate")] == 0 for q in scenario.QUIET)
        assert 0.7 < value[(scenario.NOISY, "rejected_rate")] < 0.95

    # The race: exactly the limit admitted by each strict algorithm, across the service's workers.
    params = json.loads((out / "live" / "run.json").read_text())["parameters"]
    assert params["workers"] == WORKERS == 2
    assert params["policy"] == {"requests": scenario.NEIGHBOUR_POLICY.requests,
                                "window_s": scenario.NEIGHBOUR_POLICY.window_s}
    for design in QUICK_DESIGNS:
        race = params["race"]["results"][design]
        assert (race["admitted"], race["refused"], race["no_over_admission"]) == (LIMIT, RACE - LIMIT, True)

    # The checker judged every decision: one project per tenant, the schedule, the race.
    history = load(out / "live" / "history.jsonl")
    decided = [op for op in history if op.type == "ok"]
    n = len(QUICK_DESIGNS)
    assert len(decided) == n * (len(TENANTS) + sum(offered.values()) + RACE)
    assert not [op for op in history if op.type == "info"]
    quiet = n * (len(scenario.QUIET) + sum(offered[q] for q in scenario.QUIET))
    checks = {c["name"]: c for c in json.loads((out / "live" / "check.json").read_text())}
    assert checks["no_over_admission"]["valid"] and checks["no_over_admission"]["checked"] == len(decided)
    assert checks["quiet_never_limited"]["valid"] and checks["quiet_never_limited"]["checked"] == quiet
    # `saaslab check ratelimit` re-checks the same folder with the same verdicts.
    assert [(r.name, r.valid, r.checked) for r in check_run(out, settings)] == [
        (c["name"], c["valid"], c["checked"]) for c in checks.values()]

    # The unsafe design, same harness: it over-admits the race and the checker says so.
    unsafe = json.loads((out / "unsafe" / "live" / "run.json").read_text())["parameters"]
    assert unsafe["designs"] == ["naive"]
    assert unsafe["race"]["results"]["naive"]["admitted"] > LIMIT
    unsafe_checks = {c["name"]: c for c in json.loads((out / "unsafe" / "live" / "check.json").read_text())}
    assert not unsafe_checks["no_over_admission"]["valid"]
    race_ops = [op for op in load(out / "unsafe" / "live" / "history.jsonl") if "(race)" in op.value["route"]]
    assert len(race_ops) == 2 * RACE and not no_over_admission(race_ops).valid
    env = {**os.environ, "SAASLAB_DATABASE_URL": settings.database_url or "",
           "SAASLAB_REDIS_URL": settings.redis_url or ""}
    cli = subprocess.run([sys.executable, "-m", "saaslab.cli", "check", "ratelimit", "--out", str(out / "unsafe")],
                         capture_output=True, text=True, env=env, timeout=120)
    # A run of the unsafe design alone is meant to fail its checker: caught as expected, exit status 0.
    assert cli.returncode == 0, cli.stderr
    assert "no_over_admission: VIOLATED (expected of the unsafe design)" in cli.stdout + cli.stderr

    # Beside a simulation of the same cells, the report compares like with like.
    monkeypatch.setattr(scenario, "DESIGNS", QUICK_DESIGNS)
    monkeypatch.setattr(scenario, "LOAD_POINTS", (LOAD_POINT,))
    scenario.run(out, quick=True, seeds=2, jobs=1)
    report = build(load_pattern("ratelimit", tmp_path))
    assert not [note for note in report.notes if "not like for like" in note or "lasted" in note], report.notes
    assert report.sim_vs_live is not None
    measured = {(r[0], r[2]): r for r in report.sim_vs_live.rows}
    assert set(measured) == {(d, g) for d in QUICK_DESIGNS for g in ("noisy", "quiet (mean of 4)", "all tenants")}
    assert all(measured[(d, "quiet (mean of 4)")][4] == "0.00%" for d in QUICK_DESIGNS)
    assert f"fixed_window and token_bucket admitted exactly {LIMIT}" in " ".join(report.conclusions)
    assert "All 2 invariant checks held on the live history" in " ".join(report.conclusions)
