"""What the live harness tells a Locust run: one typed file, written once, read by every Locust process.

`saaslab load` (saaslab/live/harness.py) writes a `LoadRun` as JSON and starts Locust with
`--saaslab-run PATH` (the option `loadtests/common/lab.py` adds to Locust's own parser). Without
the option every field has its default, so plain `locust -f loadtests/<pattern>.py --host URL` runs
the pattern's default scenario. The admin token is not here: it comes from `SAASLAB_ADMIN_TOKEN`,
as CONTRACT.md has it for any Locust run.

Safe to import anywhere (no Locust, no gevent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

OPTION = "--saaslab-run"
DEFAULT_OUT = Path("reports") / "locust"


class LoadRun(BaseModel):
    """One Locust run of a pattern's locustfile. A field left None takes the locustfile's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = "run"
    """Names the run in each history op's `process` and in the harness's logs."""
    out_dir: Path = DEFAULT_OUT
    """Where each process writes its summary `<class>-w<index>.json` and its history."""
    seed: int = 1
    load_point: float | None = None
    """The pattern's load point (tenancy: share of capacity; ratelimit: the noisy tenant's rate over its
    quota; idempotency: payments over the measured capacity)."""
    workload: dict[str, Any] = Field(default_factory=dict)
    """Keyword overrides of the pattern's workload (tenancy and ratelimit: `noisy_neighbour`'s; idempotency:
    fields of `loadtests.idempotency.Plan`)."""
    design: str | None = None
    """The design the service under test runs, recorded with each operation (ratelimit: its algorithm)."""
    rate: float | None = None
    """Idempotency: logical payments per second (default load_point x capacity_rps)."""
    capacity_rps: float | None = None
    """Idempotency: the service's measured payment capacity."""
    probe_size: int | None = None
    """How big a probe is: the race's simultaneous requests (ratelimit), objects per kind (tenancy)."""

    @classmethod
    def read(cls, path: str | Path | None) -> LoadRun:
        """The run at `path`; the defaults when there is none."""
        if not path:
            return cls()
        return cls.model_validate_json(Path(path).read_text())

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2))
        return path
