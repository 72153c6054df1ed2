"""The sharding simulation: NOT BUILT YET (issue #14). The declaration needs the module; `run` says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 1, progress: Any = None) -> Path:
    raise NotImplementedError("the sharding simulation (scenarios/sharding.py) is not built yet")
