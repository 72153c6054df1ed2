"""The tenancy notebook runs top to bottom in this venv's kernel, with and without a live run."""

from __future__ import annotations

from pathlib import Path

import pytest
from notebook_run import execute, images, text_of

from saaslab.results import ALL_TENANTS, Row, write_run

pytestmark = pytest.mark.e2e

BUDGET_S = 60.0
"""The notebook promises a run well under a minute."""


def test_without_a_live_run_it_simulates_and_says_how_to_measure(tmp_path: Path) -> None:
    nb, elapsed = execute("tenancy", tmp_path)
    out = text_of(nb)
    assert elapsed < BUDGET_S
    table = {tuple(line.split()[:2]) for line in out.splitlines() if "x" in line}
    assert {(d, lp) for d in ("fifo", "bulkhead", "wfq") for lp in ("0.3", "0.5", "0.7")} <= table
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("load 0")] == [
        "load 0.3", "load 0.5", "load 0.7"]
    assert "saaslab load tenancy --quick" in out
    assert images(nb) == 1


def test_with_a_live_run_it_sets_measured_beside_simulated(tmp_path: Path) -> None:
    live_ratio = {"fifo": 40.0, "bulkhead": 2.5, "wfq": 1.25}
    rows = [Row("tenancy-live-test", "live", "tenancy", design, 0, 0.5, ALL_TENANTS, "quiet_p99_vs_solo",
                ratio, "ratio") for design, ratio in live_ratio.items()]
    write_run(tmp_path / "tenancy" / "live", run_id="tenancy-live-test", pattern="tenancy", source="live",
              rows=rows, parameters={})
    nb, elapsed = execute("tenancy", tmp_path)
    out = text_of(nb)
    assert elapsed < BUDGET_S
    # Rows of the simulated-versus-measured table: design, load, simulated (± CI), measured, gap.
    measured = sorted((cols[0], cols[-2]) for cols in map(str.split, out.splitlines())
                      if cols[:1] in (["fifo"], ["bulkhead"], ["wfq"]) and cols[-1].endswith("%"))
    assert measured == [("bulkhead", "2.50x"), ("fifo", "40.0x"), ("wfq", "1.25x")]
    assert "No live results" not in out
    assert images(nb) == 2
