"""What a slot scheduler is, for the two runtimes that drive one: the service's gate
(reference_impl/tenancy/gate.py) and the simulated server (scenarios/kernel/server.py).

The scheduler designs themselves are tenancy's (reference_impl/tenancy/core.py); this kernel module
holds only the job they queue and the calls they answer, so the simulated server can drive any of
them without importing a pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Job:
    """A request waiting for a slot. `token` is the caller's handle (a future, a SimPy event)."""

    tenant: str
    token: Any
    arrival_us: int
    cost_us: int = 1000
    seq: int = 0
    start_tag: int = 0


class Scheduler(Protocol):
    design: str
    slots: int
    busy: int

    def submit(self, job: Job) -> None: ...

    def dispatch(self) -> Job | None: ...

    def release(self, tenant: str) -> None: ...

    def withdraw(self, job: Job) -> bool: ...

    def queued(self) -> int: ...
