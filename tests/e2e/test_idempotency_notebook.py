"""The idempotency notebook runs top to bottom in this venv's kernel, with and without a live run."""

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
DESIGNS = ("none", "redis", "postgres")
LOADS = ("0.3", "0.9", "1.5")


def test_without_a_live_run_it_simulates_judges_and_says_how_to_measure(tmp_path: Path) -> None:
    nb, elapsed = execute("idempotency", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    # One run per design, judged by the checker: none fails exactly_one_effect, the others pass it.
    closeup = {cols[0]: line for line in lines if (cols := line.split()) and cols[0] in DESIGNS and "payments," in line}
    assert set(closeup) == set(DESIGNS)
    assert "exactly_one_effect FAILED" in closeup["none"]
    assert "exactly_one_effect held (0)" in closeup["redis"] and "exactly_one_effect held (0)" in closeup["postgres"]
    assert "0 duplicate effects" in closeup["postgres"] and "0 duplicate effects" in closeup["redis"]
    assert "no_orphan_charges held (0)" in closeup["postgres"]
    # The sweep table: every design at every load, with 95% intervals over the default five seeds; redis and
    # postgres show no duplicate, none does.
    table = {(cols[0], cols[1]): cols[2::3] for cols in map(str.split, lines)
             if len(cols) == 2 + 3 * 5 and cols[0] in DESIGNS and cols[3] == "±"}
    assert set(table) == {(d, lp) for d in DESIGNS for lp in LOADS}
    for lp in LOADS:
        assert table[("redis", lp)][0] == table[("postgres", lp)][0] == "0.00"
        assert float(table[("none", lp)][0].replace(",", "")) > 0
        assert table[("postgres", lp)][1] == "0.00"  # orphans after the completer
    summary = [line for line in lines if line.startswith(tuple(f"{d}: duplicates" for d in DESIGNS))]
    assert len(summary) == 3 and any(line.startswith("none: ") and "held in 0 of 15 runs" in line for line in summary)
    assert any(line.startswith("postgres: duplicates per 10k from 0.0 to 0.0") and "held in 15 of 15 runs" in line
               for line in summary)
    assert any("saaslab load idempotency" in line for line in lines)
    assert images(nb) == 1


def test_with_a_live_run_it_shows_the_reports_comparison(tmp_path: Path) -> None:
    live = tmp_path / "idempotency" / "live"
    rows = []
    for design, lp, dup in (("none", 0.9, 321.5), ("postgres", 0.9, 0.0), ("redis", 0.6, 0.0)):
        for metric, value, unit in (("duplicates_per_10k", dup, "per_10k"), ("orphans_per_10k", 0.0, "per_10k"),
                                    ("latency_p99", 42.5, "ms")):
            rows.append(Row("idempotency-live-test", "live", "idempotency", design, 0, lp, ALL_TENANTS, metric, value,
                            unit))
    write_run(live, run_id="idempotency-live-test", pattern="idempotency", source="live", rows=rows, parameters={})
    (live / "check.json").write_text(json.dumps([CheckResult("exactly_one_effect[none]", False, 800, 31).to_dict(),
                                                 CheckResult("exactly_one_effect[postgres]", True, 800).to_dict()]))
    # A stored simulation beside the live run, as `saaslab sim idempotency --quick` writes it (fewer seeds).
    patterns.get("idempotency").module("simulation").run(tmp_path / "idempotency", quick=True, seeds=2, jobs=2)
    nb, elapsed = execute("idempotency", tmp_path, SEEDS="range(3)")
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    assert any(line.startswith("3 seed(s) per cell: fewer than the 5") for line in lines)
    small = [line for line in lines if line.split()[:1] == ["none"] and line.split()[1] in LOADS]
    assert len(small) == len(LOADS) and not any(" ± " in line for line in small)
    assert any(line.startswith("simulation idempotency-sim-") and line.endswith(f"in {tmp_path / 'idempotency' / 'sim'}")
               for line in lines)
    assert any(line.startswith("live run idempotency-live-test of 20") for line in lines)
    # The same numbers as the report's simulated-versus-measured table for the same runs.
    title, table, conclusions = report_comparison("idempotency", tmp_path)
    assert printed_table(lines, title) == table
    measured = {(r[0], r[1]): r[3] for r in table[1:]}
    assert measured == {("none", "0.9"): "322", ("postgres", "0.9"): "0.00", ("redis", "0.6"): "0.00"}
    said = [line for line in lines if line in conclusions]
    assert said, "the report's agreement sentences"
    assert "check exactly_one_effect[none]: VIOLATED (800 checked, 31 violations)" in lines
    assert "check exactly_one_effect[postgres]: held (800 checked, 0 violations)" in lines
    assert not any("No live results" in line for line in lines)
    assert images(nb) == 2


def test_notebook_has_one_parameters_cell() -> None:
    code = [c for c in nbformat.read(NOTEBOOKS / "idempotency.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
