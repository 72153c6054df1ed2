"""What the notebooks (notebooks/*.ipynb) use: the results folder the CLI uses, the report's simulated-versus-measured
comparison (so each notebook shows the report's own numbers rather than a comparison of its own), and how their
small runs show numbers over few seeds."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from saaslab import patterns
from saaslab.report.content import Table
from saaslab.report.data import PatternData, RunData, load_pattern, results_dir
from saaslab.report.evidence import MIN_SEEDS
from saaslab.report.numbers import Summary, decimals_for, fmt_num

__all__ = ["MIN_SEEDS", "error_bar", "number", "print_table", "report_data", "results_dir", "run_line",
           "seeds_sentence", "shown"]


def _when(meta: dict[str, object]) -> str:
    stamp = str(meta.get("finished_at") or "")
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return "an unknown date"


def run_line(run: RunData) -> str:
    """'live run tenancy-live-20240601T120000Z-1a2b3c of 2024-06-01 12:00 UTC, in reports/tenancy/live': which run
    (its run.json's id) and when it finished."""
    run_id = run.meta.get("run_id") or (run.rows[0].run_id if run.rows else "?")
    when = _when(run.meta)
    label = "live run" if run.source == "live" else "simulation"
    return f"{label} {run_id} of {when}, in {run.directory}"


def report_data(pattern: str, reports_dir: Path | None = None) -> PatternData:
    """The runs the report compares: the live run in `reports_dir` (default: the results folder the CLI writes,
    SAASLAB_RESULTS_DIR), beside its simulation or, when there is none, the pattern's quick simulation
    (`saaslab sim PATTERN --quick`) run into a temporary folder, never into `reports_dir`. Says which runs it
    used."""
    data = load_pattern(pattern, reports_dir)
    if data.sim is not None or data.live is None:
        for run in data.runs:
            print(run_line(run))
        return data
    print(run_line(data.live))
    scratch = Path(tempfile.mkdtemp(prefix=f"saaslab-{pattern}-")) / pattern
    scratch.mkdir()
    try:
        (scratch / "live").symlink_to(data.live.directory.resolve(), target_is_directory=True)
    except OSError:  # no symlinks (some Windows setups): a copy of the live run
        shutil.copytree(data.live.directory, scratch / "live")
    patterns.get(pattern).module("simulation").run(scratch, quick=True, jobs=os.cpu_count() or 1)
    print(f"simulation: none stored in {data.directory}, so the quick simulation (`saaslab sim {pattern} "
          f"--quick`) ran just now into {scratch / 'sim'}")
    return load_pattern(pattern, directory=scratch)


def seeds_sentence(seeds: Iterable[int] | int) -> str | None:
    """A sentence when the notebook's small runs use too few seeds for a 95% interval to mean anything (with 3
    seeds Student's t multiplies the spread by 4.3), else None; `shown` and `error_bar` then leave the interval
    out."""
    n = seeds if isinstance(seeds, int) else len(list(seeds))
    if n >= MIN_SEEDS:
        return None
    return (f"{n} seed(s) per cell: fewer than the {MIN_SEEDS} a 95% confidence interval needs here, so the "
            f"numbers below are means without intervals and the plots have no error bars. For intervals, set "
            f"SEEDS = range({MIN_SEEDS}) in the first code cell.")


def shown(summary: Summary, suffix: str = "") -> str:
    """`summary.text(suffix)` ('1.49x ± 0.05'), without the interval when it rests on fewer than MIN_SEEDS seeds."""
    if summary.n >= MIN_SEEDS or not summary.known:
        return summary.text(suffix)
    return f"{fmt_num(summary.mean, decimals_for(summary.mean))}{suffix}"


def error_bar(summary: Summary) -> float:
    """The half-width to draw: the 95% interval's, or 0 with fewer than MIN_SEEDS seeds (or none known)."""
    return summary.ci95 if summary.n >= MIN_SEEDS and not math.isnan(summary.ci95) else 0.0


def print_table(table: Table) -> None:
    """A report's table as text: one line per row, cells separated by ' | '."""
    widths = [max(len(str(x)) for x in column) for column in zip(table.columns, *table.rows, strict=True)]
    print(table.title)
    for cells in (table.columns, *table.rows):
        print(" | ".join(str(x).ljust(w) for x, w in zip(cells, widths, strict=True)).rstrip())
    print(table.caption)


def number(cell: str) -> float:
    """The leading number of a table cell ('1,234.5 ± 3.2' -> 1234.5); nan for 'n/a' and the like."""
    found = re.match(r"[+-]?[0-9][0-9,]*(\.[0-9]+)?", cell.strip())
    return float(found.group(0).replace(",", "")) if found else float("nan")
