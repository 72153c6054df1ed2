"""Live tenancy runs against real services: the quick load run and the probe against the leaky design."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reference_impl.tenancy.invariants import check_run
from saaslab import patterns
from saaslab.live.tenancy import DELAY_MS, PROBE_OBJECTS, run_probe
from saaslab.report import load_pattern
from saaslab.reports.tenancy import build
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings
from scenarios import tenancy as scenario
from scenarios.kernel.workload import arrivals

pytestmark = pytest.mark.e2e


def test_quick_live_run_writes_the_simulations_rows_holds_the_rate_and_passes_the_checker(
        settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "tenancy"
    csv_path = patterns.get("tenancy").module("live").run(settings, out, quick=True)
    assert csv_path == out / "live" / "results.csv"
    rows = read_rows(csv_path)
    assert {r.source for r in rows} == {"live"} and {r.load_point for r in rows} == {0.5}
    assert {r.design for r in rows} == set(scenario.DESIGNS)

    # The live run replays the very schedule the simulation replays: same offered counts.
    schedule = arrivals(scenario.noisy_neighbour(0.5), seed=1)
    expected_offered = Counter(tenant for _, tenant in schedule)
    for design in scenario.DESIGNS:
        mine = [r for r in rows if r.design == design]
        live_names = {(r.tenant, r.metric) for r in mine}
        sim_names = {(r.tenant, r.metric) for r in scenario.simulate_one(design, 0.5, 1, duration_s=2.0)}
        assert sim_names <= live_names, sim_names - live_names
        value = {(r.tenant, r.metric): r.value for r in mine}
        assert {t: value[(t, "offered")] for t in expected_offered} == dict(expected_offered)
        assert value[(ALL_TENANTS, "dropped")] == 0
        target = value[(ALL_TENANTS, "target_rate")]
        assert target == pytest.approx(len(schedule) / scenario.DURATION_S)
        assert value[(ALL_TENANTS, "sent_rate")] == pytest.approx(target, rel=0.02)
        assert value[(ALL_TENANTS, "errors")] == 0 and value[(ALL_TENANTS, "timeouts")] == 0
        assert value[(ALL_TENANTS, "quiet_p99_vs_solo")] > 0
        # The gate's counters: every request held its slot for at least the injected delay, and the
        # overhead is what the hold adds to it.
        for prefix in ("", "solo_"):
            hold = value[(ALL_TENANTS, f"{prefix}slot_hold_ms")]
            assert DELAY_MS <= hold < DELAY_MS + 30
            assert value[(ALL_TENANTS, f"{prefix}service_overhead_ms")] == pytest.approx(hold - DELAY_MS)
            assert 0 < value[(ALL_TENANTS, f"{prefix}slot_hold_sd_ms")] < hold
            assert value[(ALL_TENANTS, f"{prefix}outside_slot_ms")] > 0

    run = json.loads((out / "live" / "run.json").read_text())
    assert run["parameters"]["workload"]["burst_start_s"] == scenario.BURST_START_S
    assert run["parameters"]["solo_workload"]["duration_s"] == scenario.SOLO_DURATION_S
    assert run["parameters"]["wall_s"] < 180
    check = json.loads((out / "live" / "check.json").read_text())
    assert check["valid"] is True, check
    # `saaslab check tenancy` re-checks the same folder with the same verdicts.
    assert all(r.valid for r in check_run(out, settings))

    # Beside a simulation of the same workload, the report compares like with like and shows the
    # assumed slot hold against the measured one.
    scenario.run(out, seeds=1, jobs=1)
    report = build(load_pattern("tenancy", tmp_path))
    assert not [n for n in report.notes if "differs from the simulated" in n or "solo baseline (" in n]
    calibration = [c for c in report.conclusions if c.startswith("Calibration:")]
    assert len(calibration) == 1 and f"{scenario.SLOT_HOLD_MS:g} ms" in calibration[0], report.conclusions


def test_the_probe_catches_the_leaky_isolation_design(settings: Settings, tmp_path: Path) -> None:
    # Two Locust processes: the tenants are created once on the master and shared.
    processes = 2
    results = {r.name: r for r in run_probe(settings, tmp_path, isolation="leaky", processes=processes)}
    read = results["no_cross_tenant_read"]
    # Every one of B's reads of A's projects and payments got through, in each process.
    assert not read.valid and read.violations == 2 * PROBE_OBJECTS * processes
    assert not results["no_cross_tenant_write"].valid
    # The control still holds: the probe really exercised the routes.
    assert results["own_objects_visible"].valid and results["own_objects_visible"].checked > 0
    assert json.loads((tmp_path / "live" / "check.json").read_text())["valid"] is False

    # And the command line says so with its exit code, so scripts and CI can rely on it.
    env = {**os.environ, "SAASLAB_DATABASE_URL": settings.database_url or "",
           "SAASLAB_REDIS_URL": settings.redis_url or ""}
    cli = subprocess.run([sys.executable, "-m", "saaslab.cli", "check", "tenancy", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 1, cli.stderr
    assert "no_cross_tenant_read: VIOLATED" in cli.stdout + cli.stderr
