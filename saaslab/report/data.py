"""Loading what `saaslab sim` and `saaslab load` wrote: a pattern's runs, one per source.

A pattern's results folder holds `sim/` and `live/`; by default it is <SAASLAB_RESULTS_DIR>/<pattern>/, the folder
the CLI's `--out` names otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saaslab.history import CheckResult
from saaslab.results import Row, read_rows
from saaslab.settings import Settings

SOURCES = ("sim", "live")


class ReportError(Exception):
    """There is nothing to report on; the message says which command produces it."""


@dataclass
class RunData:
    """One source of a pattern's results: its rows, its run.json and (live runs) its check results."""

    source: str
    directory: Path
    rows: list[Row]
    meta: dict[str, Any]
    checks: list[CheckResult] | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return self.meta.get("parameters") or {}

    def select(self, *, metric: str | None = None, tenant: str | None = None) -> list[Row]:
        return [r for r in self.rows
                if (metric is None or r.metric == metric) and (tenant is None or r.tenant == tenant)]


@dataclass
class PatternData:
    """Both sources of one pattern; a source that was never run is None."""

    pattern: str
    directory: Path
    sim: RunData | None
    live: RunData | None

    @property
    def runs(self) -> list[RunData]:
        return [r for r in (self.sim, self.live) if r is not None]


def load_run(directory: Path, source: str) -> RunData | None:
    """The run in `directory` (results.csv, run.json, optional check.json), or None if there is none."""
    csv_path = directory / "results.csv"
    if not csv_path.is_file():
        return None
    meta_path = directory / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    check_path = directory / "check.json"
    checks = None
    if check_path.is_file():
        listed = json.loads(check_path.read_text())
        # Either a bare list of CheckResult dicts or {"valid": ..., "results": [...]}.
        if isinstance(listed, dict):
            listed = listed.get("results", [])
        checks = [CheckResult(**c) for c in listed]
    return RunData(source=source, directory=directory, rows=read_rows(csv_path), meta=meta, checks=checks)


def results_dir() -> Path:
    """The folder that holds one results folder per pattern: SAASLAB_RESULTS_DIR, default the project's reports/."""
    return Path(Settings().results_dir)


def pattern_folder(pattern: str, reports_dir: Path | None = None) -> Path:
    """<reports_dir>/<pattern>, reports_dir defaulting to `results_dir()`."""
    return (results_dir() if reports_dir is None else reports_dir) / pattern


def command(verb: str, pattern: str, directory: Path) -> str:
    """`saaslab <verb> <pattern>`, with the `--out` that reaches `directory` when it is not the pattern's default
    results folder."""
    default = pattern_folder(pattern).resolve() == directory.resolve()
    return f"saaslab {verb} {pattern}" + ("" if default else f" --out {directory}")


def load_pattern(pattern: str, reports_dir: Path | None = None, *, directory: Path | None = None) -> PatternData:
    """The pattern's runs in its results folder: `directory` if given, else <reports_dir>/<pattern> (reports_dir
    defaulting to SAASLAB_RESULTS_DIR)."""
    folder = directory if directory is not None else pattern_folder(pattern, reports_dir)
    sim, live = (load_run(folder / s, s) for s in SOURCES)
    if sim is None and live is None:
        raise ReportError(f"no results for {pattern} in {folder} (no sim/ or live/ results.csv there); "
                          f"run `{command('sim', pattern, folder)}` first")
    return PatternData(pattern=pattern, directory=folder, sim=sim, live=live)
