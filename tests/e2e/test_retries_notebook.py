"""The retries notebook runs top to bottom in this venv's kernel, well under a minute, stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from notebook_run import NOTEBOOKS, execute, images, lines_of, printed_table, text_of

from reference_impl.retries.core import BROOKER_POLICIES
from saaslab.results import Row, write_run
from scenarios import retries

pytestmark = pytest.mark.e2e

NOTEBOOK = NOTEBOOKS / "retries.ipynb"
BUDGET_S = 60.0


def test_it_runs_both_experiments_and_states_the_answers(tmp_path: Path) -> None:
    nb, elapsed = execute("retries", tmp_path)
    out, lines = text_of(nb), lines_of(nb)
    assert elapsed < BUDGET_S
    assert images(nb) == 2 and f"No live results at {tmp_path / 'retries' / 'live' / 'results.csv'}." in out
    # The delay table: one line per policy; exponential doubles from 10 ms.
    assert [ln.split()[:3] for ln in lines if ln.startswith("exponential ")][0] == ["exponential", "10.0", "20.0"]
    # The contention tables: every client count, every policy with a 95% CI.
    table = [ln.split() for ln in lines if ln.split()[1:2] == ["clients"]]
    assert [int(cols[0]) for cols in table] == [10, 25, 50, 100] * 2
    assert all(len(cols) == 2 + 3 * len(retries.CONTENTION_POLICIES) and cols[3] == "±" for cols in table)
    assert all(p in out for p in retries.CONTENTION_POLICIES)
    answers = [ln for ln in lines if "least work" in ln]
    assert len(answers) == 4 and "least work exponential" not in out
    # The map: every design at every load, and plain retries collapse after the long spike at load 0.9.
    states = ("recovered", "draining", "collapsed")
    rows = {tuple(cols[:2]): cols[2:] for cols in map(str.split, lines) if len(cols) == 5 and cols[2] in states}
    assert set(rows) == {(d, f"{lp:g}") for d in retries.META_DESIGNS for lp in (0.3, 0.6, 0.9)}
    assert rows[("full_jitter", "0.9")][:2] == ["recovered", "collapsed"]
    assert rows[("full_jitter+breaker", "0.9")][:2] == ["recovered", "recovered"]


def test_notebook_has_one_parameters_cell_and_it_comes_first() -> None:
    code = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.outputs for c in code)


def test_it_shows_the_reports_live_comparison(tmp_path: Path) -> None:
    """With a live run in REPORTS the notebook prints the report's own simulated-versus-measured tables."""
    contention = [r for p in BROOKER_POLICIES for seed in range(5)
                  for r in retries.simulate_contention(p, 10, seed, trials=1, run_id="live")]
    timeline = retries.TIMELINES["quick"]
    meta = [r for d in ("no_backoff", "full_jitter+budget") for r in
            retries.simulate_metastability(d, 0.6, 1, triggers_s=(2,), timeline=timeline, run_id="live")]
    live = [Row(r.run_id, "live", r.pattern, r.design, r.seed, r.load_point, r.tenant, r.metric, r.value, r.unit)
            for r in contention + meta]
    write_run(tmp_path / "retries" / "live", run_id="live", pattern="retries", source="live", rows=live,
              parameters={"metastability": {"trigger_at_s": timeline.trigger_at_s, "recovery_s": timeline.recovery_s,
                                            "hold_s": timeline.hold_s}})
    # Its simulation: the same cells (a stored one, so the notebook runs no quick simulation of its own).
    write_run(tmp_path / "retries" / "sim", run_id="sim", pattern="retries", source="sim", rows=contention + meta,
              parameters={"metastability": {"trigger_at_s": timeline.trigger_at_s, "recovery_s": timeline.recovery_s,
                                            "hold_s": timeline.hold_s}})
    nb, _ = execute("retries", tmp_path)
    lines = lines_of(nb)
    assert any(line.startswith("live run: ") for line in lines)
    assert any("agree" in line and "yes" in line for line in lines) or any(" | yes" in line for line in lines)
    table = printed_table(lines, "Contention, simulated versus measured")
    assert [r[1] for r in table[1:]] == list(BROOKER_POLICIES)
    cells = printed_table(lines, "Metastability cells, measured versus simulated")
    assert {r[0] for r in cells[1:]} == {"no_backoff", "full_jitter+budget"}
    assert any(line.startswith("Live, with 10 clients") for line in lines)
    assert images(nb) == 3
