"""The failover notebook runs top to bottom in this venv's kernel, with and without a live run."""

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
DESIGNS = ("async", "sync", "unsafe")
FAULTS = ("kill", "pause", "partition")


def test_without_a_live_run_it_simulates_judges_and_says_how_to_measure(tmp_path: Path) -> None:
    nb, elapsed = execute("failover", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    # One drill per design and fault, judged by the checker: sync loses nothing, unsafe is caught splitting.
    drills = {(cols[0], cols[1]): line for line in lines if (cols := line.split())[:1] and cols[0] in DESIGNS
              and len(cols) > 1 and cols[1] in FAULTS}
    assert set(drills) == {(d, f) for d in DESIGNS for f in FAULTS}
    assert all("every check held" in drills[("sync", f)] and " 0 lost " in drills[("sync", f)] for f in FAULTS)
    assert "no_split_brain FAILED" in drills[("unsafe", "partition")]
    assert all("no_split_brain" not in drills[(d, f)] for d in ("async", "sync") for f in FAULTS)
    # The timers table: every preset and design, with intervals over the 5 seeds.
    timed = [line.split() for line in lines if line.split()[:1] and line.split()[0] in ("lab", "sentinel", "patroni",
                                                                                       "repmgr") and "±" in line]
    assert len(timed) == 4 * 2
    patroni = next(line for line in lines if line.startswith("patroni: a dead primary costs"))
    assert 20 <= float(patroni.split("costs ")[1].split(" s")[0]) <= 40
    assert any("saaslab failover drill --all" in line for line in lines)
    assert images(nb) == 2


def test_with_a_live_run_it_shows_the_reports_comparison(tmp_path: Path) -> None:
    live = tmp_path / "failover" / "live"
    rows = []
    for design, unavailable, lost, split in (("sync", 4.1, 0.0, 0.0), ("unsafe", 3.6, 30.0, 12.0)):
        for fault in ("kill", "partition"):
            for metric, value, unit in (("unavailability", unavailable, "s"), ("writes_lost", lost, "count"),
                                        ("split_brain_writes", split if fault == "partition" else 0.0, "count")):
                rows.append(Row("failover-live-test", "live", "failover", design, 0, 0.0, ALL_TENANTS,
                                f"{metric}@{fault}", value, unit))
    write_run(live, run_id="failover-live-test", pattern="failover", source="live", rows=rows,
              parameters={"timers": "lab"})
    (live / "check.json").write_text(json.dumps([CheckResult("no_lost_writes[sync]", True, 400).to_dict(),
                                                 CheckResult("no_split_brain[unsafe]", False, 400, 12).to_dict()]))
    # A stored simulation beside the live run, as `saaslab sim failover --quick` writes it (fewer seeds).
    patterns.get("failover").module("simulation").run(tmp_path / "failover", quick=True, seeds=2, jobs=2)
    nb, elapsed = execute("failover", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    assert any(line.startswith("simulation ") and line.endswith(f"in {tmp_path / 'failover' / 'sim'}")
               for line in lines)
    assert any(line.startswith("live run failover-live-test of ") for line in lines)
    # The same numbers as the report's simulated-versus-measured table for the same runs.
    title, table, conclusions = report_comparison("failover", tmp_path)
    assert printed_table(lines, title) == table
    measured = {(r[0], r[1], r[3]): r[5] for r in table[1:]}
    assert measured[("sync", "kill", "unavailable (s)")] == "4.10"
    assert measured[("unsafe", "partition 5 s", "split-brain writes")] == "12.0"
    assert len(table) == 1 + 2 * 2 * 3
    assert all(r[2] == "lab" and r[4] not in ("not simulated", "no simulation") for r in table[1:])
    assert [line for line in lines if line in conclusions], "the report's agreement sentences"
    assert "check no_split_brain[unsafe]: VIOLATED (400 checked, 12 violations)" in lines
    assert images(nb) == 2


def test_notebook_has_its_knobs_in_the_first_code_cell() -> None:
    code = [c for c in nbformat.read(NOTEBOOKS / "failover.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert all(knob in code[0].source for knob in ("SEEDS", "DESIGNS", "FAULTS", "RATE", "LAG_MS", "PRESETS",
                                                   "MAP_TTLS_S", "MAP_PAUSES_S", "REPORTS = results_dir()"))
