"""The rate-limiting notebook runs top to bottom in this venv's kernel, with and without a live run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from notebook_run import execute, images, lines_of, printed_table, report_comparison

from saaslab.history import CheckResult
from saaslab.results import ALL_TENANTS, Row, write_run

pytestmark = pytest.mark.e2e

BUDGET_S = 60.0
"""The notebook promises a run well under a minute."""
DESIGNS = ("fixed_window", "sliding_log", "sliding_counter", "token_bucket", "gcra", "naive")
QUIET = ("quiet1", "quiet2", "quiet3", "quiet4")


def rows_starting(lines: list[str], first: str) -> list[list[str]]:
    return [line.split() for line in lines if line.split()[:1] == [first]]


def test_without_a_live_run_it_simulates_and_says_how_to_measure(tmp_path: Path) -> None:
    nb, elapsed = execute("ratelimit", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    # The boundary table: one row per design, three flood sizes.
    boundary = {d: rows_starting(lines, d)[0][1:] for d in DESIGNS}
    assert boundary["fixed_window"] == boundary["naive"] == ["1.00x", "2.00x", "2.00x"]
    assert boundary["sliding_log"] == ["1.00x", "1.00x", "1.00x"]
    assert "flood 10x: most admitted by fixed_window and naive (2.00x the limit), least by sliding_log (1.00x)" in lines
    # The race table: the atomic designs stop at the limit of 50 and hold; naive admits every request.
    race = {d: rows_starting(lines, d)[1][1:] for d in DESIGNS}
    for d in DESIGNS[:-1]:
        assert race[d] == ["50", "50", "50", "50", "held"]
    assert race["naive"] == ["50", "100", "200", "500", "VIOLATED"]
    # The noisy neighbour: the quiet tenants are never refused.
    assert all(rows_starting(lines, d)[2][-1] == "0.0%" for d in DESIGNS)
    assert any("saaslab load ratelimit" in line for line in lines)
    assert images(nb) == 2


def test_with_a_live_run_it_shows_the_reports_comparison(tmp_path: Path) -> None:
    live = tmp_path / "ratelimit" / "live"
    rows = []
    for design, lp, noisy in (("gcra", 2.0, 0.5), ("fixed_window", 10.0, 0.9)):
        def row(tenant: str, metric: str, value: float, design: str = design, lp: float = lp) -> Row:
            return Row("ratelimit-live-test", "live", "ratelimit", design, 0, lp, tenant, metric, value, "")

        rows += [row("noisy", "rejected_rate", noisy), *(row(q, "rejected_rate", 0.0) for q in QUIET),
                 row(ALL_TENANTS, "latency_p99", 12.5)]
    write_run(live, run_id="ratelimit-live-test", pattern="ratelimit", source="live", rows=rows, parameters={})
    (live / "check.json").write_text(json.dumps([CheckResult("no_over_admission", True, 1234).to_dict()]))
    # A stored simulation beside the live run, written by the CLI into the folder SAASLAB_RESULTS_DIR names (no
    # --out), which the notebook reads through the same setting.
    env = {**os.environ, "SAASLAB_RESULTS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "saaslab.cli", "sim", "ratelimit", "--quick", "--seeds", "2",
                           "--jobs", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sim_id = json.loads((tmp_path / "ratelimit" / "sim" / "run.json").read_text())["run_id"]
    nb, elapsed = execute("ratelimit", tmp_path)
    lines = lines_of(nb)
    assert elapsed < BUDGET_S
    assert any(line.startswith(f"simulation {sim_id} of 20") and line.endswith(f"in {tmp_path / 'ratelimit' / 'sim'}")
               for line in lines)
    assert any(line.startswith("live run ratelimit-live-test of 20") for line in lines)
    # The same numbers as the report's simulated-versus-measured table for the same runs.
    title, table, conclusions = report_comparison("ratelimit", tmp_path)
    assert printed_table(lines, title) == table
    noisy = sorted((r[0], r[1], r[4]) for r in table[1:] if r[2] == table[1][2])
    assert noisy == [("fixed_window", "10", "90.0%"), ("gcra", "2", "50.0%")]
    agreement = [line for line in lines if "simulated 429 rates are within" in line]
    assert len(agreement) == 1 and agreement[0] in conclusions
    assert "check no_over_admission: held (1234 checked, 0 violations)" in lines
    assert not any("No live results" in line for line in lines)
    assert images(nb) == 3
