"""The quick live retries run against a real service: Brooker's experiment and the map's cells write the
simulation's rows, the checker passes on conditional writers and catches blind ones, and the report sets
the live run beside the simulation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.retries_plan import QUICK
from reference_impl.retries.core import BROOKER_POLICIES
from reference_impl.retries.invariants import check_run
from saaslab import patterns
from saaslab.report import load_pattern
from saaslab.reports.retries import build
from saaslab.results import read_rows, write_run
from saaslab.settings import Settings
from scenarios import retries as scenario
from scenarios.retries import trigger_metric

pytestmark = pytest.mark.e2e


def test_quick_live_run_writes_the_simulations_rows_and_its_checks(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "retries"
    said: list[str] = []
    csv_path = patterns.get("retries").module("live").run(settings, out, quick=True, unsafe=True,
                                                           progress=said.append)
    rows = read_rows(csv_path)
    assert {r.source for r in rows} == {"live"}
    contention = {(r.design, int(r.load_point), r.seed, r.metric): r.value for r in rows
                  if r.metric.startswith("contention_")}
    assert {(p, n, s) for p, n, s, _ in contention} == {(p, 10, s) for p in BROOKER_POLICIES for s in range(5)}
    for (_p, n, _s, metric), value in contention.items():
        if metric == "contention_calls":
            assert value >= n  # every client wrote once at least
    meta = {r.metric for r in rows if r.metric.startswith("meta_")}
    spike = QUICK.metastability
    assert spike is not None
    sim_names = {r.metric for r in scenario.simulate_metastability("no_backoff", spike.loads[0], 0,
                                                                    triggers_s=spike.triggers_s,
                                                                    timeline=spike.timeline_of())}
    assert sim_names <= meta and trigger_metric("meta_send_lag_p99", spike.triggers_s[0]) in meta
    assert {r.design for r in rows if r.metric.startswith("meta_")} == set(spike.designs)

    # Every acknowledged write applied once, none lost: exact counts from the history and the read-back state.
    live = out / "live"
    check = json.loads((live / "check.json").read_text())
    assert check["valid"] and {r["name"] for r in check["results"]} == {"every_write_applied_once", "no_lost_update"}
    state = json.loads((live / "state.json").read_text())["projects"]
    history = [json.loads(line) for line in (live / "history.jsonl").read_text().splitlines()]
    acked = [op for op in history if op["type"] == "ok" and op["f"] == "patch_project"]
    for project, final in state.items():
        mine = [op for op in acked if op["value"]["project"] == project]
        assert final["version"] == 1 + len(mine) == 1 + 10
    assert json.loads((live / "run.json").read_text())["parameters"]["checks"] == {
        "every_write_applied_once": True, "no_lost_update": True}

    # The blind writers (If-Match: *) lose updates, and the checker says so.
    unsafe = check_run(out / "unsafe", Settings())
    assert [r.name for r in unsafe if not r.valid] == ["no_lost_update"]
    assert any("expected to fail" in line for line in said)

    cli = [sys.executable, "-m", "saaslab.cli", "check", "retries", "--out"]
    assert subprocess.run([*cli, str(out)], capture_output=True, text=True, timeout=120).returncode == 0
    caught = subprocess.run([*cli, str(out / "unsafe")], capture_output=True, text=True, timeout=120)
    # The unsafe design's run alone is meant to fail its checker: caught as expected, exit status 0.
    assert caught.returncode == 0, caught.stderr
    assert "no_lost_update: VIOLATED (expected of the unsafe design)" in caught.stdout + caught.stderr

    # The report sets the live ranking beside the simulation's (a simulation of just the live cells, to stay quick).
    sim_rows = [r for p in BROOKER_POLICIES for seed in range(5)
                for r in scenario.simulate_contention(p, 10, seed, trials=2, run_id="sim")]
    sim_rows += [r for d in spike.designs for seed in range(5)
                 for r in scenario.simulate_metastability(d, spike.loads[0], seed, triggers_s=spike.triggers_s,
                                                          timeline=spike.timeline_of(), run_id="sim")]
    write_run(out / "sim", run_id="sim", pattern="retries", source="sim", rows=sim_rows, parameters={
        "contention": {"network_delay_ms": {"mean": 10, "sd": 2}}, "metastability": spike.timeline})
    report = build(load_pattern("retries", tmp_path))
    section = " ".join(report.by_section["simulated versus measured"])
    assert "Live, with 10 clients" in section and "The simulation's order at 10 clients was" in section
    assert "map cells tried live that the simulation also ran" in section
    assert report.sim_vs_live is not None and len(report.sim_vs_live.rows) == len(BROOKER_POLICIES)
    titles = [t.title for t in report.tables]
    assert "Metastability cells, measured versus simulated" in titles
