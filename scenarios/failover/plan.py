"""The failover simulation's parameters: designs, timers, the model's knobs (`Setup`), the grids each
experiment sweeps, and how a metric's name carries the condition it was measured under (the package
docstring says what each knob does)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from reference_impl.failover.core import PRESETS, US_PER_S, Policy, Timers, timers_s
from saaslab.patterns.failover import REPLICATION, FailoverSettings

PATTERN = "failover"
DESIGNS = tuple(d.name for d in REPLICATION.designs)
"""async, sync, unsafe: as `SAASLAB_FAILOVER` spells them."""
UNSAFE = next(d.name for d in REPLICATION.designs if d.unsafe)
DETECTOR_DESIGN = REPLICATION.default
"""The design the false-failover map runs: whether a failover starts does not depend on replication."""
PRESET_ORDER = ("lab", "sentinel", "patroni", "repmgr")
FAULTS = ("kill", "pause", "partition")
"""What the drills do to the primary (reference_impl/failover/drill.py): SIGKILL, SIGSTOP for a while, cut off."""
MAP_FAULTS = ("pause", "spike")
"""What may make a detector declare a live primary dead: a GC-like pause, a latency spike on its links."""

_SETTINGS = FailoverSettings()
"""The service's defaults (saaslab/patterns/failover.py): the lag limit the manager promotes under."""


def scaled_timers(ttl_s: float) -> Timers:
    """Timers named `ttl<x>s` with Patroni's proportions: loop_wait = retry_timeout = ttl / 3."""
    return timers_s(f"ttl{ttl_s:g}s", ttl_s, ttl_s / 3, ttl_s / 3)


def timers_named(name: str) -> Timers:
    """A preset of reference_impl/failover/core.py (`lab`, `patroni`, `repmgr`, `sentinel`) or `ttl<x>s`."""
    if name in PRESETS:
        return PRESETS[name]
    m = re.fullmatch(r"ttl([0-9.]+)s", name)
    if m is None:
        raise ValueError(f"unknown timers {name!r}: use one of {', '.join(PRESETS)} or ttl<seconds>s")
    return scaled_timers(float(m[1]))


def policy(design: str, timers: Timers) -> Policy:
    """The manager's policy for `design`, as reference_impl/failover/drill.py builds it (one replica)."""
    if design not in DESIGNS:
        raise ValueError(f"unknown failover design {design!r}; choose one of {', '.join(DESIGNS)}")
    sync = design == "sync"
    return Policy(timers, fencing=design != UNSAFE, replicas_total=1, sync_standbys=1 if sync else 0,
                  max_lag_bytes=_SETTINGS.failover_max_lag_bytes)


def drill_hold_s(timers: Timers) -> float:
    """How long the drills hold a pause or a partition: ttl + 2 loop_wait, long enough for a failover."""
    return (timers.ttl_us + 2 * timers.loop_wait_us) / US_PER_S


@dataclass(frozen=True)
class Setup:
    """Every knob of one run besides design, write rate, seed and condition."""

    net_rtt_ms: float = 1.0
    """A round trip between two hosts of the same data centre (client, server, agent, lease store)."""
    commit_ms: float = 0.5
    """A write's local commit at the primary (mean, exponential)."""
    client_timeout_s: float = 1.0
    """The pool's timeout (reference_impl/failover/pool.py, as the drills set it): a write with no answer by
    then has an unknown outcome (`info`)."""
    retry_pause_ms: float = 50.0
    """A writer that saw its write refused waits this long before its next one (as the drills' writers do)."""
    pools: int = 5
    """Client pools; pool 0 runs on the first primary's host (the drills' minority writer), the rest apart."""
    probe_share: float = 0.2
    """Share of acknowledged writes read back at once by the same pool (the read-your-writes probe)."""
    promote_ms: float = 240.0
    """`pg_promote` of a replica, as measured on this kind of machine (docs: ANCHORS, 0.24 s)."""
    rejoin_s: float = 1.0
    """A demoted primary's way back: stop, pg_rewind if it diverged, start as a standby."""
    record_bytes: int = 100
    """WAL bytes per write, so a position (LSN) is in bytes as the lag limit is."""
    spike_mean_ms: float = 1000.0
    """During a latency spike every message to or from the primary's host takes this much longer, on average
    (exponential)."""
    warmup_s: float = 1.0
    """From the start to the fault, plus up to one loop_wait at random (the fault's phase in the loop)."""
    settle_s: float = 2.0
    """After the last thing the run waits for (the hold, a failover, a rejoin), before reading back."""

    def parameters(self) -> dict[str, Any]:
        return asdict(self)


SETUP = Setup()

# --- the grids -----------------------------------------------------------------------------------

MAP_TTLS_S = {"full": (1.5, 3.0, 6.0, 15.0, 30.0), "quick": (1.5, 3.0, 15.0)}
"""Detection timeouts (the lease's ttl, loop_wait = retry_timeout = ttl / 3) of the false-failover map."""
MAP_LENGTHS_S = {"full": (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 45.0), "quick": (1.0, 2.0, 4.0, 16.0)}
"""How long a pause or a latency spike lasts."""
MAP_TRIALS = {"full": 10, "quick": 6}
"""Pauses (or spikes) per seed and cell, each at a random phase of the agents' loops."""

TIMER_PRESETS = PRESET_ORDER
TIMER_DESIGNS = ("async", "sync")
TIMER_RATE = {"full": 20.0, "quick": 10.0}
"""Writes per second while a preset's failover is timed: enough to time the outage to 1/rate."""
TIMER_TRIALS = {"full": 4, "quick": 2}
"""Primary deaths per seed and preset, each at a random phase of the agents' loops."""
INCIDENTS_PER_YEAR = 4.0
"""Assumed primary losses per year (hardware, kernel, OOM kill, a host's maintenance gone wrong) to turn
unavailability per incident into downtime per year; an assumption, set it to your fleet's rate."""

LOSS_RATES = {"full": (25.0, 100.0, 400.0), "quick": (25.0, 100.0)}
"""Writes per second (the rows' load_point) in the lost-writes experiment."""
LOSS_LAGS_MS = {"full": (1.0, 10.0, 100.0, 1000.0), "quick": (1.0, 100.0)}
"""Replication lag: how long after its commit a write reaches the replica (± 10%, in order)."""
LOSS_TIMERS = "lab"
"""The lost-writes experiment runs the lab's timers, so its kill/pause/partition cells are the drills'."""
DRILL_RATE = 100.0
DRILL_LAG_MS = 1.0
"""The cell the simulated-versus-measured table reads: the drills run on one machine, lag about a ms."""

# --- conditions in metric names ------------------------------------------------------------------

_CONDITION = re.compile(
    r"^(?P<metric>[a-z0-9_]+)@(?P<fault>kill|pause|spike|partition)(?:(?P<hold>[0-9.]+)s)?"
    r"(?:/(?P<timers>(?!lag)[a-z0-9.]+))?(?:/lag(?P<lag>[0-9.]+)ms)?$")


@dataclass(frozen=True, order=True)
class Condition:
    """What a run did to the primary, with which timers and replication lag."""

    fault: str
    hold_s: float
    """How long a pause, spike or partition lasted (0 for a kill)."""
    timers: str
    lag_ms: float

    @property
    def suffix(self) -> str:
        hold = "" if self.fault == "kill" else f"{self.hold_s:g}s"
        return f"@{self.fault}{hold}/{self.timers}/lag{self.lag_ms:g}ms"

    def metric(self, name: str) -> str:
        """`writes_lost` under this condition: `writes_lost@partition5s/lab/lag1ms`."""
        return name + self.suffix

    @property
    def label(self) -> str:
        hold = "" if self.fault == "kill" else f" {self.hold_s:g} s"
        return f"{self.fault}{hold}, {self.timers} timers, lag {self.lag_ms:g} ms"


def split_metric(metric: str, *, fault: str = "kill", hold_s: float = 0.0, timers: str = LOSS_TIMERS,
                 lag_ms: float = DRILL_LAG_MS) -> tuple[str, Condition | None]:
    """('writes_lost', Condition('partition', 5, 'lab', 1)) from 'writes_lost@partition5s/lab/lag1ms'; a part
    left out (a live row may write `writes_lost@partition`) takes the keyword's value; (metric, None) without
    any '@'."""
    m = _CONDITION.match(metric)
    if m is None:
        return metric, None
    hold = float(m["hold"]) if m["hold"] else (0.0 if m["fault"] == "kill" else hold_s)
    return m["metric"], Condition(m["fault"] or fault, hold, m["timers"] or timers,
                                  float(m["lag"]) if m["lag"] else lag_ms)
