"""The retries notebook runs top to bottom in this venv's kernel, well under a minute, stored without outputs."""

from __future__ import annotations

import nbformat
import pytest
from notebook_run import NOTEBOOKS, execute, images, lines_of, text_of

from scenarios import retries

pytestmark = pytest.mark.e2e

NOTEBOOK = NOTEBOOKS / "retries.ipynb"
BUDGET_S = 60.0


def test_it_runs_both_experiments_and_states_the_answers() -> None:
    nb, elapsed = execute("retries")
    out, lines = text_of(nb), lines_of(nb)
    assert elapsed < BUDGET_S
    assert images(nb) == 2
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


def test_notebook_has_one_parameters_cell() -> None:
    code = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
