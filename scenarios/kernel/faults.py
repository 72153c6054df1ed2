"""Faults as SimPy events: named, scheduled, injectable into any modelled component.

A `Fault` says what goes wrong (`kind`), where (`target`, a component name or "*" for all),
when (`at_s`) and for how long (`length_s`). `schedule` resolves a list of faults into concrete
start times for one seed (optional jitter), so a sweep can vary fault timing reproducibly.
`inject` is the SimPy process that starts and ends them on their targets.

Kinds every server model understands (see `scenarios.kernel.server.Server`):

- "latency": each request started during the fault takes `factor` times longer plus `extra_ms`.
- "pause": the process is stopped (SIGSTOP): nothing starts, nothing finishes until it ends.
- "crash": requests in flight and queued fail, new arrivals fail until it ends (the restart).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import simpy

from scenarios.kernel import US_PER_S

FaultKind = Literal["latency", "pause", "crash"]
FAULT_KINDS: tuple[FaultKind, ...] = ("latency", "pause", "crash")
ALL_TARGETS = "*"


@dataclass(frozen=True)
class Fault:
    name: str
    at_s: float
    length_s: float
    kind: FaultKind
    params: Mapping[str, Any] = field(default_factory=dict)
    target: str = ALL_TARGETS

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        if self.at_s < 0 or self.length_s < 0:
            raise ValueError(f"fault {self.name!r}: at_s and length_s must be >= 0")

    def hits(self, target: str) -> bool:
        return self.target in (ALL_TARGETS, target)


class FaultTarget(Protocol):
    """A modelled component that faults can hit (a server, a network link, a store)."""

    name: str

    def fault_started(self, fault: Fault) -> None: ...

    def fault_ended(self, fault: Fault) -> None: ...


def schedule(faults: Iterable[Fault], seed: int = 0, jitter_s: float = 0.0) -> tuple[Fault, ...]:
    """The faults with start times shifted by U(0, jitter_s) for this seed, sorted by start."""
    rng = np.random.default_rng([seed, 0xFA17])
    resolved = [replace(f, at_s=f.at_s + float(rng.uniform(0.0, jitter_s))) if jitter_s > 0 else f
                for f in faults]
    return tuple(sorted(resolved, key=lambda f: (f.at_s, f.name)))


def inject(env: simpy.Environment, faults: Iterable[Fault], targets: Iterable[FaultTarget]
           ) -> list[simpy.Process]:
    """Start one SimPy process per fault (the clock in µs); returns them, to wait for their ends."""
    modelled = tuple(targets)
    procs = []
    for f in faults:
        hit = [t for t in modelled if f.hits(t.name)]
        if not hit:
            raise ValueError(f"fault {f.name!r} targets {f.target!r}, which is not modelled")
        procs.append(env.process(_run_fault(env, f, hit)))
    return procs


def _run_fault(env: simpy.Environment, fault: Fault, targets: list[FaultTarget]
               ) -> Generator[simpy.Event, Any, None]:
    yield env.timeout(max(0, round(fault.at_s * US_PER_S) - env.now))
    for t in targets:
        t.fault_started(fault)
    yield env.timeout(round(fault.length_s * US_PER_S))
    for t in targets:
        t.fault_ended(fault)
