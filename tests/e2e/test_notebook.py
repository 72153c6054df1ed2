"""The tenancy notebook runs top to bottom in this venv's kernel, with and without a live run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from notebook_run import execute, images, lines_of, printed_table, report_comparison, text_of

from saaslab.results import ALL_TENANTS, Row, write_run

pytestmark = pytest.mark.e2e

BUDGET_S = 60.0
"""The notebook promises a run well under a minute."""


def test_without_a_live_run_it_simulates_and_says_how_to_measure(tmp_path: Path) -> None:
    nb, elapsed = execute("tenancy", tmp_path)
    out = text_of(nb)
    assert elapsed < BUDGET_S
    table = {tuple(line.split()[:2]): line for line in out.splitlines() if "x" in line}
    assert {(d, lp) for d in ("fifo", "bulkhead", "wfq") for lp in ("0.3", "0.5", "0.7")} <= set(table)
    # Five seeds by default: the ratios carry their 95% intervals, and nothing says the seeds are too few.
    assert all(" ± " in table[(d, "0.5")] for d in ("fifo", "bulkhead", "wfq"))
    assert "seed(s) per cell: fewer than" not in out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("load 0")] == [
        "load 0.3", "load 0.5", "load 0.7"]
    assert "saaslab load tenancy --quick" in out
    assert images(nb) == 1


def test_with_a_live_run_it_shows_the_reports_comparison(tmp_path: Path) -> None:
    live_ratio = {"fifo": 40.0, "bulkhead": 2.5, "wfq": 1.25}
    rows = [Row("tenancy-live-test", "live", "tenancy", design, 0, 0.5, ALL_TENANTS, "quiet_p99_vs_solo",
                ratio, "ratio") for design, ratio in live_ratio.items()]
    write_run(tmp_path / "tenancy" / "live", run_id="tenancy-live-test", pattern="tenancy", source="live",
              rows=rows, parameters={})
    nb, elapsed = execute("tenancy", tmp_path, SEEDS="range(3)")
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    # Three seeds: said in a sentence, and the small simulation's numbers come without intervals.
    assert any(line.startswith("3 seed(s) per cell: fewer than the 5 a 95% confidence interval needs") for line in lines)
    small = [line for line in lines if line.split()[:2] == ["fifo", "0.5"]]
    assert small and " ± " not in small[0]
    # The live run by its id and date, from its run.json.
    assert any(line.startswith("live run tenancy-live-test of 20") and line.endswith(f"in {tmp_path / 'tenancy' / 'live'}")
               for line in lines)
    # No simulation stored: the notebook ran the quick one into a scratch folder and left REPORTS alone.
    said = next(line for line in lines if line.startswith("simulation: none stored in"))
    scratch = Path(said.rsplit(" into ", 1)[1])
    assert not (tmp_path / "tenancy" / "sim").exists()
    try:
        title, table, conclusions = report_comparison("tenancy", scratch.parent.parent)
    finally:
        shutil.rmtree(scratch.parent.parent)
    # The same numbers as the report's table for the same runs, and its agreement sentences.
    assert printed_table(lines, title) == table
    assert [r[4] for r in table[1:] if r[2] == table[1][2]] == ["40.0x", "2.50x", "1.25x"]
    agreement = [line for line in lines if line.startswith("Simulation and measurement")]
    assert agreement and set(agreement) <= set(conclusions)
    assert "No live results" not in text_of(nb)
    assert images(nb) == 2
