"""The sagas notebook runs top to bottom in this venv's kernel, with and without a live run."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from notebook_run import NOTEBOOKS, execute, images, lines_of, printed_table, report_comparison

from saaslab import patterns
from saaslab.history import CheckResult
from saaslab.results import ALL_TENANTS, Row, write_run

pytestmark = pytest.mark.e2e

BUDGET_S = 60.0
"""The notebook promises about ten seconds; a minute leaves room for a busy machine."""
DESIGNS = ("orchestration", "choreography", "twopc", "unsafe")
SAFE = DESIGNS[:3]


def test_without_a_live_run_it_simulates_judges_and_says_how_to_measure(tmp_path: Path) -> None:
    nb, elapsed = execute("sagas", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    # One run per design under failures and crashes, judged by the checker: only unsafe fails it.
    closeup = {cols[0]: line for line in lines if (cols := line.split()) and cols[0] in DESIGNS and "orders," in line}
    assert set(closeup) == set(DESIGNS)
    assert "all_or_nothing FAILED" in closeup["unsafe"]
    assert all("every check held" in closeup[d] and " 0 anomalous" in closeup[d] for d in SAFE)
    # The sweep table: every design, load and condition; the safe designs show no anomaly.
    table = [line.split() for line in lines if line.split()[:1] and line.split()[0] in DESIGNS and "±" in line]
    assert len(table) == len(DESIGNS) * 2 * 2
    summary = {line.split(":")[0]: line for line in lines if line.startswith(tuple(f"{d}: up to" for d in DESIGNS))}
    assert set(summary) == set(DESIGNS)
    assert all("up to 0 anomalous" in summary[d] and "held in 20 of 20 runs" in summary[d] for d in SAFE)
    assert "up to 0 anomalous" not in summary["unsafe"]
    assert any("saaslab load sagas" in line for line in lines)
    assert images(nb) == 1


def test_with_a_live_run_it_shows_the_reports_comparison(tmp_path: Path) -> None:
    live = tmp_path / "sagas" / "live"
    rows = []
    for design, p50, compensated in (("orchestration", 41.0, 0.02), ("twopc", 55.0, 0.01)):
        for metric, value, unit in (("latency_p50", p50, "ms"), ("latency_p99", 3 * p50, "ms"),
                                    ("throughput", 60.0, "orders/s"), ("compensated_share", compensated, "ratio")):
            rows.append(Row("sagas-live-test", "live", "sagas", design, 0, 0.6, ALL_TENANTS, metric, value, unit))
    write_run(live, run_id="sagas-live-test", pattern="sagas", source="live", rows=rows, parameters={})
    (live / "check.json").write_text(json.dumps([CheckResult("all_or_nothing", True, 400).to_dict(),
                                                 CheckResult("terminal", False, 400, 3).to_dict()]))
    # A stored simulation beside the live run, as `saaslab sim sagas --quick` writes it (fewer seeds).
    patterns.get("sagas").module("simulation").run(tmp_path / "sagas", quick=True, seeds=2, jobs=2)
    nb, elapsed = execute("sagas", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    assert any(line.startswith("simulation ") and line.endswith(f"in {tmp_path / 'sagas' / 'sim'}") for line in lines)
    assert any(line.startswith("live run sagas-live-test of ") for line in lines)
    # The same numbers as the report's simulated-versus-measured table for the same runs.
    title, table, conclusions = report_comparison("sagas", tmp_path)
    assert printed_table(lines, title) == table
    measured = {(r[0], r[1], r[3]): r[5] for r in table[1:]}
    assert measured[("orchestration", "0.6", "p50 (ms)")] == "41.0"
    assert measured[("twopc", "0.6", "share compensated")] == "0.01"
    assert len(table) == 1 + 2 * 4
    assert all(r[2] == "no faults" and r[4] != "not simulated" for r in table[1:])
    assert [line for line in lines if line in conclusions], "the report's agreement sentences"
    assert "check all_or_nothing: held (400 checked, 0 violations)" in lines
    assert "check terminal: VIOLATED (400 checked, 3 violations)" in lines
    assert images(nb) == 1


def test_notebook_has_its_knobs_in_the_first_code_cell() -> None:
    code = [c for c in nbformat.read(NOTEBOOKS / "sagas.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert all(knob in code[0].source for knob in ("SEEDS", "LOADS", "DURATION_S", "DESIGNS", "CONDITIONS"))
