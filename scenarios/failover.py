"""The failover simulation: NOT BUILT YET (issue #15). The declaration needs the module; `run` says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 1, progress: Any = None) -> Path:
    raise NotImplementedError("the failover simulation (scenarios/failover.py) is not built yet")
