"""The results schema every run writes, simulated or live (docs/design.md, "Designs, workloads, faults, results").

A run is a folder holding `results.csv` (tidy rows, one measurement each) and `run.json`
(parameters, git commit, package versions, machine). Simulations write `<out>/sim/`, live runs
`<out>/live/`, so a report finds both sources of one pattern side by side.

Latencies go through `LatencyHistogram` (an HDR histogram in integer microseconds) in both
sources, so a p99 is computed the same way whether SimPy or Locust produced the samples.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from hdrh.histogram import HdrHistogram

Source = Literal["sim", "live"]

COLUMNS = ("run_id", "source", "pattern", "design", "seed", "load_point", "tenant", "metric", "value", "unit")
ALL_TENANTS = "*"
"""The `tenant` of a row that describes the whole run rather than one tenant."""
WORKER_PREFIX = "worker-"
"""The `tenant` of a live row that describes one load-generator process (`worker_label`): its share of the
schedule and how late it sent, beside the run-level (`ALL_TENANTS`) row that merges every process."""


def worker_label(index: int) -> str:
    """The `tenant` of the rows about Locust process `index` (0 for a run of one process)."""
    return f"{WORKER_PREFIX}{index}"


@dataclass(frozen=True, slots=True)
class Row:
    run_id: str
    source: Source
    pattern: str
    design: str
    seed: int
    load_point: float
    tenant: str
    metric: str
    value: float
    unit: str


def new_run_id(pattern: str, source: Source) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{pattern}-{source}-{stamp}-{uuid.uuid4().hex[:6]}"


class LatencyHistogram:
    """HDR histogram of latencies in integer microseconds, 1 µs to 10 min, 3 significant digits."""

    def __init__(self) -> None:
        self._h = HdrHistogram(1, 600_000_000, 3)

    def record_us(self, value_us: int | float) -> None:
        self._h.record_value(max(1, min(int(value_us), 600_000_000)))

    def record_s(self, seconds: float) -> None:
        self.record_us(seconds * 1e6)

    def add(self, other: LatencyHistogram) -> None:
        self._h.add(other._h)

    @property
    def count(self) -> int:
        return self._h.get_total_count()

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0-100) in milliseconds; NaN when empty."""
        if self.count == 0:
            return float("nan")
        return self._h.get_value_at_percentile(q) / 1000.0

    def mean_ms(self) -> float:
        return self._h.get_mean_value() / 1000.0 if self.count else float("nan")

    def encode(self) -> str:
        """Compressed text form, to ship a histogram between processes."""
        return self._h.encode().decode("ascii")

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        h = cls()
        h._h = HdrHistogram.decode(text.encode("ascii"))
        return h

    def metrics(self, prefix: str = "latency") -> Iterator[tuple[str, float, str]]:
        """(metric, value, unit) triples: count, mean, p50, p90, p99, p99.9."""
        yield f"{prefix}_count", float(self.count), "requests"
        yield f"{prefix}_mean", self.mean_ms(), "ms"
        for q, name in ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p999")):
            yield f"{prefix}_{name}", self.percentile_ms(q), "ms"


def write_rows(path: Path, rows: Iterable[Row]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([getattr(r, c) for c in COLUMNS])
            n += 1
    return n


def read_rows(path: Path) -> list[Row]:
    types = {f.name: f.type for f in fields(Row)}
    out = []
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            out.append(
                Row(
                    **{
                        k: (float(v) if types[k] == "float" else int(v) if types[k] == "int" else v)
                        for k, v in rec.items()
                    }
                )
            )
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    import os

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def package_versions() -> dict[str, str]:
    names = ("saaslab", "simpy", "locust", "fastapi", "uvicorn", "redis", "psycopg", "numpy", "hdrhistogram")
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_run(out_dir: Path, *, run_id: str, pattern: str, source: Source, rows: Iterable[Row],
              parameters: dict[str, Any]) -> Path:
    """Write `results.csv` and `run.json` into `out_dir`; returns the CSV path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    n = write_rows(csv_path, rows)
    run = {
        "run_id": run_id,
        "pattern": pattern,
        "source": source,
        "rows": n,
        "finished_at": datetime.now(UTC).isoformat(),
        "parameters": parameters,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "machine": machine(),
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=2, default=str))
    return csv_path

