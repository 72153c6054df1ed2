"""The sagas simulation: NOT BUILT YET (issue #13). The declaration needs the module; `run` says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 1, progress: Any = None) -> Path:
    raise NotImplementedError("the sagas simulation (scenarios/sagas.py) is not built yet")
