"""What a pattern declares: its question, its designs, and where each of its faces lives.

A declaration is data. It names modules by their dotted path instead of importing them, so the
settings, the CLI and the report index can read every pattern's declaration without importing a
single pattern's code (and without PostgreSQL, Redis or FastAPI). Whoever needs a face imports it
through `Pattern.module(face)` at the moment it runs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
"""The project root: where `loadtests/` and `notebooks/` sit beside the packages."""


@dataclass(frozen=True)
class Design:
    """One selectable strategy of a pattern, as a setting or a scenario names it."""

    name: str
    summary: str
    unsafe: bool = False
    """The deliberately unsafe design whose invariant checker must be seen to fail."""


@dataclass(frozen=True)
class Axis:
    """A set of designs; with `setting`, the one the service runs is picked by `SAASLAB_<SETTING>`.

    An axis without a setting is compared in simulation only (the retry policies live in clients).
    """

    setting: str | None
    designs: tuple[Design, ...]
    default: str
    extra_choices: tuple[str, ...] = ()
    """Values the setting accepts that are not designs (the limiter's `off`)."""

    @property
    def choices(self) -> tuple[str, ...]:
        return (*self.extra_choices, *(d.name for d in self.designs))

    @property
    def literal(self) -> Any:
        """The setting's type: exactly the axis's choices, so a typo is refused at start-up."""
        return Literal[self.choices]


@dataclass(frozen=True)
class Pattern:
    """One pattern of the lab. Module fields are dotted paths; file fields are paths from the project root.

    Faces and the entry point each must offer (tests/unit/test_registry.py checks them all):
    - `core`: the pure decision code, standard library and kernel only.
    - `invariants`: the checker, pure functions over a history and a final state.
    - `simulation`: `run(out, *, quick, seeds, jobs, progress) -> Path` (results.csv).
    - `service`: `install(ctx) -> ServiceParts` (routers, migrations, fault points, metrics, middleware), or None.
    - `live`: `run(settings, out, *, quick, host, rate, duration, progress, unsafe, processes=1) -> Path`, or None;
      `processes` Locust processes (Locust's distributed mode) share each open-model schedule.
    - `loadtest`: the locustfile `live` drives, also runnable as plain Locust.
    - `report`: `REPORT`, the report's declaration for the report engine.
    - `notebook`: the notebook that puts simulated and measured results side by side.
    - `bench`: `run(out, *, seconds) -> dict`, or None.
    """

    slug: str
    title: str
    question: str
    axes: tuple[Axis, ...]
    core: str
    simulation: str
    report: str
    notebook: str
    invariants: str | None = None
    service: str | None = None
    live: str | None = None
    loadtest: str | None = None
    bench: str | None = None
    settings: type[BaseModel] | None = None
    """The pattern's `SAASLAB_*` settings, its axes' included: `saaslab.settings.Settings` is built from
    every registered pattern's model, so a pattern's settings are declared here and nowhere else."""

    @property
    def designs(self) -> tuple[Design, ...]:
        return tuple(d for axis in self.axes for d in axis.designs)

    @property
    def unsafe(self) -> Design | None:
        return next((d for d in self.designs if d.unsafe), None)

    @property
    def has_live(self) -> bool:
        return self.live is not None

    def module(self, face: str) -> ModuleType:
        """Import one face (`"simulation"`, `"live"`, ...) now; a face the pattern lacks is an error."""
        path = getattr(self, face)
        if path is None:
            raise LookupError(f"{self.slug} has no {face} face")
        return importlib.import_module(path)

    def path(self, face: str) -> Path:
        """The file of a file face (`"notebook"`, `"loadtest"`)."""
        value = getattr(self, face)
        if value is None:
            raise LookupError(f"{self.slug} has no {face} face")
        return ROOT / value
