"""`saaslab load PATTERN`: run a pattern's live load scenario against the reference service.

Each live pattern has a module `saaslab/live/<pattern>.py` with `run(settings, out, *, quick, host,
rate, duration, progress, unsafe) -> Path`: it starts a service per design (or drives `host`),
runs the pattern's locustfile through `saaslab.live.harness`, writes `<out>/live/results.csv`
and `run.json` (the simulation's metric names, source "live"), `history.jsonl` and
`check.json` (the pattern's invariants), and returns the CSV's path.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from saaslab import LIVE_PATTERNS
from saaslab.live.harness import Progress
from saaslab.services import ServiceError
from saaslab.settings import Settings


def run_load(pattern: str, settings: Settings, out: Path, *, quick: bool = False, host: str | None = None,
             rate: float | None = None, duration: float | None = None, progress: Progress | None = None,
             unsafe_probe: bool = False) -> Path:
    """Run `pattern`'s live load scenario; returns `<out>/live/results.csv`.

    `host` drives an already running service (lab mode on) instead of starting one per design;
    `rate` and `duration` override the workload (each pattern's module says how). `unsafe_probe`
    also runs the pattern's unsafe design in the same harness, into `<out>/unsafe/live/`, where
    its checks are expected to fail.
    """
    if pattern not in LIVE_PATTERNS:
        raise ServiceError(f"no live load scenario for pattern {pattern!r} yet; choose one of: "
                           f"{', '.join(LIVE_PATTERNS)}")
    runner = importlib.import_module(f"saaslab.live.{pattern}").run
    return runner(settings, out, quick=quick, host=host, rate=rate, duration=duration, progress=progress,
                  unsafe=unsafe_probe)
