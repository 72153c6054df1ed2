"""The sharding notebook runs top to bottom in this venv's kernel, with and without a live run."""

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
ROUTERS = ("mod", "ring", "jump", "rendezvous", "directory")


def test_without_a_live_run_it_simulates_judges_and_says_how_to_measure(tmp_path: Path) -> None:
    nb, elapsed = execute("sharding", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    # The balance table: one row per Zipf exponent, every scheme with a CI, and the floor.
    table = [line.split() for line in lines if line.split()[:1] in (["0.7"], ["1"], ["1.2"]) and "±" in line]
    assert len(table) == 3 and all(row[-1].endswith("x") for row in table)
    # Growth: mod moves about N/(N+1), the consistent schemes about 1/(N+1).
    growth = next(line for line in lines if line.startswith(" 16 -> 17"))
    assert "mod 9" in growth and "(94.12%)" in growth and "ring " in growth and "(5.88%)" in growth
    # One move per mover and write rate, judged by the checker: only the unsafe mover fails it.
    moves = [line for line in lines if line.split()[:1] in (["fenced"], ["unsafe"])]
    assert len(moves) == 4
    assert all("every check held" in m and " 0 lost, 0 left behind" in m for m in moves if m.startswith("fenced"))
    assert all("acknowledged_writes_once FAILED" in m for m in moves if m.startswith("unsafe"))
    assert any("no live run yet" in line for line in lines)
    assert any("saaslab load sharding" in line for line in lines)
    assert images(nb) == 1


def test_with_a_live_run_it_shows_the_reports_comparison(tmp_path: Path) -> None:
    live = tmp_path / "sharding" / "live"
    rows = [Row("sharding-live-test", "live", "sharding", "fenced", 0, 0.0, ALL_TENANTS, metric, value, unit)
            for metric, value, unit in (("write_blocked_ms", 4.0, "ms"), ("moved_rows", 100_400.0, "rows"),
                                        ("lost_writes", 0.0, "writes"), ("move_duration_ms", 2_500.0, "ms"))]
    rows.append(Row("sharding-live-test", "live", "sharding", "jump", 0, 0.0, ALL_TENANTS, "load_max_over_mean",
                    1.9, "ratio"))
    write_run(live, run_id="sharding-live-test", pattern="sharding", source="live", rows=rows,
              parameters={"tenant_rows": 100_000, "write_rate": 100, "tenants": 10_000, "shards": 16, "zipf": 1.0})
    (live / "check.json").write_text(json.dumps([CheckResult("acknowledged_writes_once", True, 800).to_dict(),
                                                 CheckResult("rows_conserved", False, 800, 2).to_dict()]))
    # A stored simulation beside the live run, as `saaslab sim sharding --quick` writes it (fewer seeds).
    patterns.get("sharding").module("simulation").run(tmp_path / "sharding", quick=True, seeds=2, jobs=2)
    nb, elapsed = execute("sharding", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    sim_dir = tmp_path / "sharding" / "sim"
    assert any(line.startswith("simulation ") and line.endswith(f"in {sim_dir}") for line in lines)
    # The same numbers as the report's simulated-versus-measured table for the same runs.
    title, table, conclusions = report_comparison("sharding", tmp_path)
    assert printed_table(lines, title) == table
    measured = {(r[0], r[2]): r[4] for r in table[1:]}
    assert measured[("fenced", "writes blocked (ms)")] == "4.00"
    assert measured[("jump", "hottest shard / mean load")] == "1.90"
    assert len(table) == 1 + 5
    cells = {(r[0], r[2]): (r[1], r[3]) for r in table[1:]}
    assert cells[("fenced", "rows moved")][0] == "rows 100,000, wps 100"
    assert not cells[("fenced", "rows moved")][1].endswith("*")  # the quick sweep has that very cell
    assert [line for line in lines if line in conclusions], "the report's agreement sentences"
    assert "check acknowledged_writes_once: held (800 checked, 0 violations)" in lines
    assert "check rows_conserved: VIOLATED (800 checked, 2 violations)" in lines
    assert images(nb) == 1


def test_notebook_has_its_knobs_in_the_first_code_cell() -> None:
    code = [c for c in nbformat.read(NOTEBOOKS / "sharding.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert all(knob in code[0].source for knob in ("SEEDS", "TENANTS", "SHARDS", "ZIPF", "MOVE_ROWS", "WRITE_RATES"))
