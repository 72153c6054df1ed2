"""What the notebooks (notebooks/*.ipynb) use to show a report's simulated-versus-measured comparison, so
each notebook shows the report's own numbers rather than a comparison of its own."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from saaslab import patterns
from saaslab.report.content import Table
from saaslab.report.data import PatternData, load_pattern


def report_data(pattern: str, reports_dir: Path) -> PatternData:
    """The runs the report compares: the live run in `reports_dir`, beside its simulation or, when there is none,
    the pattern's quick simulation (`saaslab sim PATTERN --quick`) run into a temporary folder, never into
    `reports_dir`. Says which simulation it used."""
    data = load_pattern(pattern, reports_dir)
    if data.sim is not None or data.live is None:
        if data.sim is not None:
            print(f"simulation: {data.sim.directory} (run {data.sim.meta.get('run_id', '?')})")
        return data
    scratch = Path(tempfile.mkdtemp(prefix=f"saaslab-{pattern}-")) / pattern
    scratch.mkdir()
    try:
        (scratch / "live").symlink_to(data.live.directory.resolve(), target_is_directory=True)
    except OSError:  # no symlinks (some Windows setups): a copy of the live run
        shutil.copytree(data.live.directory, scratch / "live")
    patterns.get(pattern).module("simulation").run(scratch, quick=True, jobs=os.cpu_count() or 1)
    print(f"simulation: none stored in {reports_dir / pattern}, so the quick simulation (`saaslab sim {pattern} "
          f"--quick`) ran just now into {scratch / 'sim'}")
    return load_pattern(pattern, scratch.parent)


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
