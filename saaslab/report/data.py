"""Loading what `saaslab sim` and `saaslab load` wrote: a pattern's runs, one per source."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saaslab.history import CheckResult
from saaslab.results import Row, read_rows

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


def load_pattern(pattern: str, reports_dir: Path = Path("reports")) -> PatternData:
    directory = reports_dir / pattern
    sim, live = (load_run(directory / s, s) for s in SOURCES)
    if sim is None and live is None:
        raise ReportError(f"no results for {pattern} in {directory}; run `saaslab sim {pattern}` first")
    return PatternData(pattern=pattern, directory=directory, sim=sim, live=live)
