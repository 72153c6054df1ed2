"""A notebook of notebooks/ executed top to bottom in this venv's kernel, and what it printed and drew, for the
e2e tests that read its outputs (tests/e2e/test_notebook.py, test_ratelimit_notebook.py, test_idempotency_notebook.py).

Named apart from the repository's notebooks/ directory, which is importable as a namespace package.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The cell tagged `parameters`: what a user would change."""
    params = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return params[0]


def execute(name: str, reports_dir: Path | None = None, **parameters: str) -> tuple[nbformat.NotebookNode, float]:
    """Execute notebooks/<name>.ipynb in a kernel whose SAASLAB_RESULTS_DIR is `reports_dir` (None: as in this
    process), so its REPORTS is resolved as the CLI resolves it; `parameters` replace assignments of its
    parameters cell (`SEEDS="range(5)"`). Returns it and the run time."""
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = parameters_cell(nb)
    for variable, value in parameters.items():
        assignment = re.compile(rf"^{variable} = .*$", re.MULTILINE)
        assert assignment.search(cell.source), f"{variable} is not set in the parameters cell"
        cell.source = assignment.sub(f"{variable} = {value}", cell.source)
    env = dict(os.environ)
    if reports_dir is not None:
        env["SAASLAB_RESULTS_DIR"] = str(reports_dir)
    started = time.monotonic()
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    return nb, time.monotonic() - started


def text_of(nb: nbformat.NotebookNode) -> str:
    """Everything its code cells printed."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def lines_of(nb: nbformat.NotebookNode) -> list[str]:
    return text_of(nb).splitlines()


def images(nb: nbformat.NotebookNode) -> int:
    """The figures it drew."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def printed_table(lines: list[str], title: str) -> list[list[str]]:
    """The rows (header first) of the table a notebook printed under `title`, one line per row with cells
    separated by ' | ' (the notebooks' `print_table`)."""
    start = lines.index(title) + 1
    rows = []
    for line in lines[start:]:
        if " | " not in line:
            break
        rows.append([cell.strip() for cell in line.split(" | ")])
    return rows


def report_comparison(pattern: str, reports_dir: Path) -> tuple[str, list[list[str]], list[str]]:
    """The report's simulated-versus-measured table for the runs in reports_dir: its title, its rows (header
    first) and its conclusions."""
    from saaslab.report import build, declaration_for, load_pattern

    report = build(declaration_for(pattern), load_pattern(pattern, reports_dir))
    assert report.sim_vs_live is not None
    table = report.sim_vs_live
    return table.title, [table.columns, *table.rows], report.conclusions
