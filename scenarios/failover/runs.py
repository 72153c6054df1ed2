"""One trial (a cluster, one fault, the checker's verdict) and the three experiments' rows."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from reference_impl.failover import invariants
from reference_impl.failover.core import US_PER_MS, US_PER_S
from saaslab.history import Op
from saaslab.results import ALL_TENANTS, Row
from scenarios.failover.lab import Lab
from scenarios.failover.plan import (
    DETECTOR_DESIGN,
    INCIDENTS_PER_YEAR,
    PATTERN,
    SETUP,
    Condition,
    Setup,
    policy,
    timers_named,
)
from scenarios.kernel.metrics import RunKey

CHECKS = ("no_lost_writes", "no_split_brain", "no_stale_reads", "failed_writes_absent")


@dataclass
class Trial:
    """What one run did and what the checker found."""

    condition: Condition
    fault_us: int
    verdict: invariants.Verdict | None
    """None when no client wrote (the false-failover map)."""
    failover_us: int | None
    """From the fault to the replica's promotion; None when nobody was promoted."""
    fenced: bool
    """Whether the first primary fenced itself (or was stopped) after the fault."""
    history: list[Op]
    events: list[tuple[int, str, str]]
    survivors: list[str]
    write_p50_ms: float
    write_p99_ms: float

    @property
    def promoted(self) -> bool:
        return self.failover_us is not None


def trial(design: str, condition: Condition, rate: float, rng: random.Random, setup: Setup = SETUP) -> Trial:
    """One run: warm up, strike the first primary (`condition.fault`), heal, let it settle, read back."""
    timers = timers_named(condition.timers)
    lab = Lab(policy(design, timers), setup, rng, rate=rate, lag_ms=condition.lag_ms)
    loop, hold_us = timers.loop_wait_us, round(condition.hold_s * US_PER_S)
    # The first primary takes the lease on its agent's first loop; the fault falls at a random phase after.
    fault_us = loop + round(setup.warmup_s * US_PER_S) + round(rng.uniform(0, loop))
    # Long enough for the lease to lapse, a replica to notice and promote, and the old primary to rejoin.
    end_us = (fault_us + hold_us + timers.ttl_us + 2 * loop + round((setup.rejoin_s + setup.settle_s) * US_PER_S)
              + round(setup.promote_ms * US_PER_MS))
    # Writes from one warm-up before the fault: what happened long before it changes nothing.
    lab.start(from_us=fault_us - round(setup.warmup_s * US_PER_S), until_us=end_us - US_PER_S)
    lab.env.process(_nemesis(lab, condition.fault, fault_us, hold_us))
    lab.env.run(until=end_us)
    primary = lab.primary()
    survivors = list(primary.log) if primary is not None else []
    verdict = invariants.check(lab.history.ops, survivors, fault_us=fault_us) if lab.history.ops else None
    promoted = lab.first("promoted", fault_us)
    fenced = any(t >= fault_us and n == "pg0" and w.startswith("fenced") for t, n, w in lab.events)
    return Trial(condition, fault_us, verdict, None if promoted is None else promoted - fault_us, fenced,
                 lab.history.ops, lab.events, survivors, lab.write_latency.percentile_ms(50),
                 lab.write_latency.percentile_ms(99))


def _nemesis(lab: Lab, fault: str, at_us: int, hold_us: int):  # type: ignore[no-untyped-def]
    yield lab.env.timeout(at_us)
    victim = "pg0"
    lab.event(victim, fault)
    if fault == "kill":
        lab.kill(victim)
        return
    if fault == "pause":
        lab.pause(victim)
    elif fault == "partition":
        lab.cut.add(victim)
    elif fault == "spike":
        lab.spike = (victim, at_us + hold_us)
    else:
        raise ValueError(f"unknown fault {fault!r}")
    yield lab.env.timeout(hold_us)
    lab.event(victim, "healed")
    if fault == "pause":
        lab.resume(victim)
    elif fault == "partition":
        lab.cut.discard(victim)


def trial_rng(experiment: str, seed: int, condition: Condition, rate: float, index: int) -> random.Random:
    """The same draws for every design of a cell (common random numbers), different per seed and trial."""
    return random.Random(f"failover:{experiment}:{seed}:{condition.suffix}:{rate:g}:{index}")


def verdict_metrics(t: Trial) -> dict[str, tuple[float, str]]:
    """The checker's numbers (invariants.rows, the names a live drill writes) plus the simulation's own."""
    out: dict[str, tuple[float, str]] = {}
    if t.verdict is not None:
        out.update(invariants.rows(t.verdict))
        for check in t.verdict.checks:
            out[check.name] = (float(check.valid), "bool")
        out["checks_valid"] = (float(t.verdict.valid), "bool")
        out["write_latency_p50"] = (t.write_p50_ms, "ms")
        out["write_latency_p99"] = (t.write_p99_ms, "ms")
    out["failover_s"] = (math.nan if t.failover_us is None else t.failover_us / US_PER_S, "s")
    out["promoted"] = (float(t.promoted), "bool")
    out["self_fenced"] = (float(t.fenced), "bool")
    return out


def _mean_rows(key: RunKey, condition: Condition, trials: Sequence[Trial], extra: dict[str, float] | None = None
               ) -> list[Row]:
    """One row per metric: the mean over the seed's trials (NaN values left out)."""
    per: dict[str, tuple[list[float], str]] = {}
    for t in trials:
        for name, (value, unit) in verdict_metrics(t).items():
            per.setdefault(name, ([], unit))[0].append(float(value))
    rows = []
    for name, (values, unit) in per.items():
        finite = [v for v in values if not math.isnan(v)]
        rows.append(key.row(ALL_TENANTS, condition.metric(name), sum(finite) / len(finite) if finite else math.nan,
                            unit))
    for name, value in (extra or {}).items():
        rows.append(key.row(ALL_TENANTS, condition.metric(name), value, "min" if name.endswith("_year") else "ratio"))
    return rows


# --- the experiments ------------------------------------------------------------------------------

def detector_rows(seed: int, *, ttls_s: Sequence[float], lengths_s: Sequence[float], faults: Sequence[str],
                  trials: int, run_id: str, setup: Setup = SETUP) -> list[Row]:
    """The false-failover map: per detection timeout, fault and length, the share of `trials` pauses or spikes
    of a live primary after which the replica was promoted (`promoted`) or the primary fenced itself."""
    key = RunKey(run_id=run_id, pattern=PATTERN, design=DETECTOR_DESIGN, seed=seed, load_point=0.0)
    rows = []
    for ttl in ttls_s:
        for fault in faults:
            for length in lengths_s:
                c = Condition(fault, length, f"ttl{ttl:g}s", 0.0)
                done = [trial(DETECTOR_DESIGN, c, 0.0, trial_rng("map", seed, c, 0.0, i), setup) for i in range(trials)]
                rows.append(key.row(ALL_TENANTS, c.metric("false_failover"),
                                    sum(t.promoted for t in done) / trials, "ratio"))
                rows.append(key.row(ALL_TENANTS, c.metric("self_fenced"),
                                    sum(t.fenced and not t.promoted for t in done) / trials, "ratio"))
    return rows


def timer_rows(design: str, rate: float, seed: int, *, presets: Sequence[str], trials: int, run_id: str,
               setup: Setup = SETUP) -> list[Row]:
    """A dead primary under each preset's timers: unavailability per incident (the checker's window) and
    per year at INCIDENTS_PER_YEAR, and the failover time, means over `trials` deaths."""
    key = RunKey(run_id=run_id, pattern=PATTERN, design=design, seed=seed, load_point=rate)
    rows = []
    for preset in presets:
        c = Condition("kill", 0.0, preset, 1.0)
        done = [trial(design, c, rate, trial_rng("timers", seed, c, rate, i), setup) for i in range(trials)]
        windows = [t.verdict.unavailability.window_us for t in done if t.verdict is not None]
        known = [w / US_PER_S for w in windows if w is not None]
        per_year = (sum(known) / len(known)) * INCIDENTS_PER_YEAR / 60 if known else math.nan
        rows += _mean_rows(key, c, done, {"downtime_per_year": per_year})
    return rows


def loss_rows(design: str, rate: float, seed: int, *, lags_ms: Sequence[float], faults: Sequence[str],
              hold_s: float, timers: str, run_id: str, setup: Setup = SETUP) -> list[Row]:
    """Lost acknowledged and split-brain writes (the checker's counts) for one design at one write rate, per
    replication lag and fault."""
    key = RunKey(run_id=run_id, pattern=PATTERN, design=design, seed=seed, load_point=rate)
    rows = []
    for lag in lags_ms:
        for fault in faults:
            c = Condition(fault, 0.0 if fault == "kill" else hold_s, timers, lag)
            rows += _mean_rows(key, c, [trial(design, c, rate, trial_rng("loss", seed, c, rate, 0), setup)])
    return rows
