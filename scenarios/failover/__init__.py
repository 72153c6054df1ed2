"""Failover scenario: when the primary dies, pauses or is cut off, how long can nobody write, how many
acknowledged writes are lost, and does anything write to two primaries at once?

The twin rule: every member's agent runs reference_impl/failover/core.py's `step` (the failure detector,
the leader lease with Patroni's rule, the most-advanced-replica decision, fencing, the rewind check) and
the lease store applies core's `acquire`/`renew`; every run's history goes through
reference_impl/failover/invariants.py's `check`, the checker the live drills use. The model (lab.py) adds
time, a network and failure, nothing else.

The model, one trial per (design, write rate, condition, seed, trial); every knob is a field of `Setup`
(plan.py):

* Two PostgreSQL servers, `pg0` (primary, holding the lease at the start) and `pg1` (replica), each with
  an agent that loops every `loop_wait` from a random phase: it asks its own server, the lease store and
  the other server how they are (each call bounded by `retry_timeout`; a paused or cut-off server does not
  answer, a dead one refuses at once), calls core.step and does what it says, as
  reference_impl/failover/manager.py does. A promotion takes `promote_ms`; a demoted or dead primary
  rejoins as a replica in `rejoin_s`, rewound when core's `needs_rewind` says it wrote past the fork.
* Replication: a committed write reaches the replica `lag_ms` ± 10% after its commit, in order.
  `async` acknowledges at the local commit; `sync` when the standby has it (with one replica, a new
  primary's commits wait until the old one has rejoined as its standby, as the drills' `ANY 1 (...)`
  does); `unsafe` is `async` without fencing. DELIBERATELY UNSAFE: the checker must catch it.
* Clients: writes arrive as a Poisson process at the write rate (the rows' `load_point`, writes/s) over
  `pools` pools; pool 0 runs on pg0's host (the drills' minority writer), the others apart. A pool writes
  to the first member that answers as a primary and not read-only (reference_impl/failover/pool.py), with
  a `client_timeout_s` timeout; a write is `ok` (with the server that took it), `fail` (no primary,
  read-only) or `info` (no answer). `probe_share` of acknowledged writes are read back at once.
* Faults, on pg0 after a warm-up, at a random phase of the loops: `kill` (SIGKILL), `pause` (SIGSTOP for
  `hold_s`: the agent still runs, so it sees its server silent), `partition` (pg0's host, with its agent
  and pool 0, cut off from everything else for `hold_s`), `spike` (every message to or from pg0's host
  takes `spike_mean_ms` longer on average, for `hold_s`).

Three experiments (tenant "*"; every metric is named `<metric>@<fault>[<hold>s]/<timers>/lag<ms>ms`,
plan.Condition; `plan.split_metric` reads it back):

1. The false-failover map (design `sync`, `load_point` 0, no writes): timers `ttl<x>s` (loop_wait =
   retry_timeout = ttl/3) x pauses and latency spikes of a live primary (MAP_TTLS_S x MAP_LENGTHS_S),
   `MAP_TRIALS` per seed: `false_failover` (share of trials after which the replica was promoted: the
   primary never died) and `self_fenced` (share where the primary fenced itself without a failover)
   (ratio).
2. Timers (designs async and sync, `TIMER_RATE` writes/s): a dead primary (`kill`) under the presets of
   reference_impl/failover/core.py (lab, sentinel, patroni, repmgr), `TIMER_TRIALS` per seed, means over
   them: the checker's metrics below, and `downtime_per_year` (min: unavailability per incident x
   `INCIDENTS_PER_YEAR`, an assumption stated in run.json).
3. Lost writes (every design, LOSS_RATES writes/s, lab timers): replication lags LOSS_LAGS_MS x kill,
   pause and partition (held `drill_hold_s`: ttl + 2 loop_wait, as the drills hold them), one trial.

The checker's metrics, as `invariants.rows` names them, so a live drill writes the same names:
`writes_total`, `writes_acknowledged`, `writes_survivors`, `writes_lost` (acknowledged, absent after
recovery), `writes_unacknowledged_present`, `lost_fraction` (ratio), `split_brain_writes` (count),
`unavailability` (s: first failed write after the fault to the first acknowledgement after it),
`longest_ack_gap` (s), `stale_reads` (count); with `no_lost_writes`, `no_split_brain`, `no_stale_reads`,
`failed_writes_absent` and `checks_valid` (bool). Also `failover_s` (fault to promotion, NaN without one),
`promoted`, `self_fenced` (bool), `write_latency_p50`, `write_latency_p99` (ms, acknowledged writes).

`run` sweeps the three; 95% confidence intervals come from the seeds. The package: plan.py (parameters,
conditions), lab.py (the cluster and clients), runs.py (a trial, the experiments' rows).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reference_impl.failover.core import PRESETS
from saaslab.results import Row, new_run_id, write_run
from scenarios.failover.lab import Lab
from scenarios.failover.plan import (
    DESIGNS,
    DETECTOR_DESIGN,
    DRILL_LAG_MS,
    DRILL_RATE,
    FAULTS,
    INCIDENTS_PER_YEAR,
    LOSS_LAGS_MS,
    LOSS_RATES,
    LOSS_TIMERS,
    MAP_FAULTS,
    MAP_LENGTHS_S,
    MAP_TRIALS,
    MAP_TTLS_S,
    PATTERN,
    SETUP,
    TIMER_DESIGNS,
    TIMER_PRESETS,
    TIMER_RATE,
    TIMER_TRIALS,
    UNSAFE,
    Condition,
    Setup,
    drill_hold_s,
    split_metric,
    timers_named,
)
from scenarios.failover.runs import CHECKS, Trial, detector_rows, loss_rows, timer_rows, trial
from scenarios.kernel.sweep import sweep

__all__ = [
    "CHECKS", "DESIGNS", "DRILL_LAG_MS", "DRILL_RATE", "FAULTS", "INCIDENTS_PER_YEAR", "PATTERN", "SETUP",
    "UNSAFE", "Condition", "Lab", "Setup", "Trial", "detector_rows", "drill_hold_s", "loss_rows", "run",
    "simulate", "split_metric", "timer_rows", "timers_named",
]


def simulate(design: str, fault: str = "kill", *, timers: str = LOSS_TIMERS, rate: float = DRILL_RATE,
             lag_ms: float = DRILL_LAG_MS, hold_s: float | None = None, seed: int = 0, setup: Setup = SETUP) -> Trial:
    """One trial, as a drill: `hold_s` defaults to the drills' ttl + 2 loop_wait (nothing for a kill)."""
    hold = 0.0 if fault == "kill" else (drill_hold_s(timers_named(timers)) if hold_s is None else hold_s)
    return trial(design, Condition(fault, hold, timers, lag_ms), rate, random.Random(f"failover:one:{seed}"), setup)


def _detector(_design: str, _lp: float, seed: int, p: Mapping[str, Any]) -> list[Row]:
    return detector_rows(seed, ttls_s=p["ttls_s"], lengths_s=p["lengths_s"], faults=MAP_FAULTS, trials=p["trials"],
                         run_id=p["run_id"], setup=p["setup"])


def _timers(design: str, lp: float, seed: int, p: Mapping[str, Any]) -> list[Row]:
    return timer_rows(design, lp, seed, presets=TIMER_PRESETS, trials=p["trials"], run_id=p["run_id"],
                      setup=p["setup"])


def _loss(design: str, lp: float, seed: int, p: Mapping[str, Any]) -> list[Row]:
    return loss_rows(design, lp, seed, lags_ms=p["lags_ms"], faults=FAULTS, hold_s=p["hold_s"], timers=LOSS_TIMERS,
                     run_id=p["run_id"], setup=p["setup"])


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None, setup: Setup = SETUP) -> Path:
    """The three experiments over `seeds` seeds; write `out/sim/results.csv` and run.json; return the CSV.

    `quick` sweeps a smaller map, fewer rates and lags, fewer trials per seed."""
    size = "quick" if quick else "full"
    run_id = new_run_id(PATTERN, "sim")
    hold_s = drill_hold_s(timers_named(LOSS_TIMERS))
    common = {"run_id": run_id, "setup": setup}
    parts: list[tuple[Callable[..., list[Row]], tuple[str, ...], tuple[float, ...], dict[str, Any]]] = [
        (_loss, DESIGNS, LOSS_RATES[size], {**common, "lags_ms": LOSS_LAGS_MS[size], "hold_s": hold_s}),
        (_timers, TIMER_DESIGNS, (TIMER_RATE[size],), {**common, "trials": TIMER_TRIALS[size]}),
        (_detector, (DETECTOR_DESIGN,), (0.0,), {**common, "ttls_s": MAP_TTLS_S[size], "lengths_s": MAP_LENGTHS_S[size],
                                                 "trials": MAP_TRIALS[size]}),
    ]
    total = sum(len(d) * len(lps) * seeds for _, d, lps, _ in parts)
    rows: list[Row] = []
    done = 0
    for simulate_part, designs, load_points, params in parts:
        offset = done
        rows += sweep(simulate_part, designs=designs, load_points=load_points, seeds=range(seeds), params=params,
                      jobs=jobs, progress=None if progress is None else (lambda d, _n, o=offset: progress(o + d, total)))
        done += len(designs) * len(load_points) * seeds
    timers = {name: {"ttl_s": t.ttl_us / 1e6, "loop_wait_s": t.loop_wait_us / 1e6,
                     "retry_timeout_s": t.retry_timeout_us / 1e6, "note": t.note} for name, t in PRESETS.items()}
    parameters = {
        "setup": setup.parameters(),
        "designs": list(DESIGNS),
        "faults": list(FAULTS),
        "timers": timers,
        "map": {"design": DETECTOR_DESIGN, "ttls_s": list(MAP_TTLS_S[size]), "lengths_s": list(MAP_LENGTHS_S[size]),
                "faults": list(MAP_FAULTS), "trials_per_seed": MAP_TRIALS[size],
                "timers_rule": "loop_wait = retry_timeout = ttl / 3"},
        "timer_presets": {"designs": list(TIMER_DESIGNS), "presets": list(TIMER_PRESETS), "rate": TIMER_RATE[size],
                          "trials_per_seed": TIMER_TRIALS[size], "incidents_per_year": INCIDENTS_PER_YEAR},
        "loss": {"rates": list(LOSS_RATES[size]), "lags_ms": list(LOSS_LAGS_MS[size]), "timers": LOSS_TIMERS,
                 "hold_s": hold_s, "faults": list(FAULTS)},
        "drill": {"rate": DRILL_RATE, "lag_ms": DRILL_LAG_MS, "timers": LOSS_TIMERS, "hold_s": hold_s},
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
