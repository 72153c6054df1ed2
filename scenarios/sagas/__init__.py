"""Sagas scenario: when a checkout spans inventory, payments and shipping, each on its own database, which
coordination design keeps every order all-done or all-undone under participant failures and crashes, and
what does each cost in latency, throughput, messages and time spent holding locks?

The twin rule: every design drives reference_impl/sagas/core.py's step machine (`next_command`, `apply`,
the `CHECKOUT` definition, the retry policy `SagaPolicy` built from the service's own settings), and every
run's history and final state go through reference_impl/sagas/invariants.py's `check`, the checker the live
run uses. The model adds time and failure, nothing else.

The model, one run per (design, load point, seed, fault condition); every knob is a field of `Setup` (plan.py):

* Checkouts arrive as a Poisson process at `load_point` x `capacity_rps(setup)` for `duration_s`: one or two
  SKUs (Zipf over `skus`, so hot SKUs contend), one unit each; stock covers `stock_cover` of the expected
  demand, so late orders of a SKU are refused and compensate for honest reasons; `p_decline` of cards are
  declined. Every design sees the same orders and the same crash times for a seed.
* Databases (records.py, lab.py): `orders` (the saga log, the coordinator log, the order service's outbox) and
  one per participant, each with `connections` connections. A participant operation is a transaction holding
  a connection: BEGIN, its statements (as in reference_impl/sagas/participants.py), COMMIT, each a round trip
  of `rtt_ms` + exponential `statement_ms`; `reserve`, `release` and `commit` lock the order's stock rows in
  SKU order after their first statement, until COMMIT. `charge` calls the provider (`provider_ms` + exponential
  `provider_jitter_ms`; the charge happens halfway and stands whatever becomes of the caller) inside the
  payments transaction, which makes payments the bottleneck: `capacity_rps` is its connections over a charge's
  hold. The rows change as the SQL changes them: keyed by step key, idempotent, tombstones.
* Participant failures (`Condition.failure`): each attempt of an action or compensation fails with that
  probability while orders arrive: half before the effect (`error`, the transaction rolls back), half after it
  with the answer lost (`timeout`: the driver waits out the step timeout). A transaction still running at the
  step timeout (waiting for a lock, say) is cancelled and rolled back (`timeout`). The step machine retries,
  gives up and compensates as the service's settings say.
* Crashes (`Condition.crash`, per second while orders arrive): the process that drives sagas dies: every
  driver, transaction and consumer in it ends (an open transaction rolls back, a prepared one stays), POSTs
  are refused, and it is back after `restart_ms`.
* The designs (drivers.py):
  - `orchestration`: the order row is the saga log, saved after every outcome (one round trip) with a lease;
    recovery (at start-up, then every `recovery_interval_s`) takes over each pending saga whose lease (`lease_s`
    past its next due moment) ran out.
  - `choreography`: each transition commits with its participant's change as an outbox row (plus an inbox row:
    two more statements); a relay per database polls every `relay_poll_ms`, XADDs to the target's stream and
    marks the rows sent; consumers read, run their step (retrying in place), write the next event, XACK; the
    order service consumes the last one. After a crash, rows published but not marked sent go out again
    (inboxes drop the duplicates) and pending entries are reclaimed once idle for `visibility_timeout_s`.
  - `twopc`: the step machine as coordinator: an action is its participant's transaction up to PREPARE
    TRANSACTION (keeping its locks: the stock rows stay locked from the reservation until COMMIT PREPARED); a
    compensation is ROLLBACK PREPARED (plus a refund: the provider cannot be prepared); the retriable last step
    is the decision, logged, then COMMIT PREPARED at all three. The coordinator logs begin, decision and end;
    after a crash it finishes what was decided and aborts the rest, compensating the prepared prefix, so
    prepared transactions sit in doubt, locks held, until it is back.
  - `unsafe`: dual writes: each action once, no log, no retry, no compensation; a crash leaves its orders
    pending. DELIBERATELY UNSAFE: the checker must catch it.
* A run ends when every order is finished (for `unsafe`: when nothing runs any more) or `drain_s` after the
  last arrival; faults stop with the arrivals.

Metrics per (design, load point, seed), tenant "*", each named `<metric>@fail<rate>/crash<rate>` for the
condition it ran under (`plan.Condition.metric`; `plan.split_metric` reads it back):

- `orders`: orders accepted (orders); `rejected`: POSTs refused while the process was down (requests)
- `completed_share`, `compensated_share`, `failed_share`: orders that ended completed, compensated (every begun
  step undone; for twopc, rolled back after something was prepared) or failed (refused before any effect)
  (ratio of orders); `unfinished`: orders never finished (orders)
- `latency_p50`, `latency_p99`: from the POST to the order's terminal state, finished orders (ms, HDR histogram)
- `throughput`: orders completed while orders arrived, per second of arrivals (orders/s)
- `messages_per_saga`: request-reply exchanges with a database, the provider or Redis, all retries, relay
  polls that found work and recovery scans included, per order (messages)
- `lock_hold_p50`, `lock_hold_p99`: how long a stock row lock was held, per lock (ms)
- `in_doubt_p50`, `in_doubt_p99`, `in_doubt_max` (twopc only): from PREPARE TRANSACTION to COMMIT or ROLLBACK
  PREPARED, per prepared transaction (ms)
- `crashes` (count); `time_to_consistency`: per crash that caught orders pending, from the crash until every
  one of them had finished, mean over the run's crashes; NaN when no crash caught an order, or when an order
  caught never finished (ms);
  `unresolved_after_crash`: orders pending at a crash that never finished (orders)
- `anomalies_per_10k`: orders the checker flags (`terminal`: never finished; `all_or_nothing`: finished with
  effects left or missing), per 10,000 orders (per_10k)
- `redeliveries` (choreography only): stream entries reclaimed after the visibility timeout (count);
  `events_per_saga` (choreography only): stream entries written per order, duplicates included (messages: the
  live run's measure of messages, which cannot count database round trips)
- `terminal`, `all_or_nothing`, `stock_conserved`, `money_conserved`, `no_orphans`, `at_most_once`,
  `no_prepared_transactions`, `unknown_outcomes`: 1 if the check held (bool); `checks_valid`: all of them

`run` sweeps DESIGNS x LOAD_POINTS x CONDITIONS (FAILURE_RATES x CRASH_RATES) x seeds (`DURATION_S`: 6 s of
arrivals, 1 s with `--quick`); 95% confidence intervals come from the seeds.

The package: plan.py (parameters, orders, conditions), records.py (the participants' rows), lab.py (time,
connections, locks, crashes, the run), drivers.py (the designs), results.py (the rows), and here the entry points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from saaslab.results import Row, new_run_id, write_run
from scenarios.kernel.sweep import sweep
from scenarios.sagas.lab import Lab
from scenarios.sagas.plan import (
    CALM,
    CONDITIONS,
    CRASH_RATES,
    DESIGNS,
    DURATION_S,
    FAILURE_RATES,
    LOAD_POINTS,
    PATTERN,
    SETUP,
    UNSAFE,
    Condition,
    Setup,
    capacity_rps,
    split_metric,
)
from scenarios.sagas.results import RunResult

__all__ = [
    "CALM", "CONDITIONS", "CRASH_RATES", "DESIGNS", "DURATION_S", "FAILURE_RATES", "LOAD_POINTS", "PATTERN", "SETUP",
    "UNSAFE", "Condition", "Lab", "RunResult", "Setup", "capacity_rps", "run", "simulate", "simulate_one",
    "split_metric",
]


def simulate(design: str, load_point: float, seed: int, condition: Condition = CALM, setup: Setup = SETUP, *,
             schedule: list[tuple[int, str]] | None = None) -> RunResult:
    """One run (the module docstring describes it); `schedule` gives the arrivals instead of the Poisson workload."""
    if design not in DESIGNS:
        raise ValueError(f"unknown saga design {design!r}; choose one of {', '.join(DESIGNS)}")
    return Lab(design, setup, load_point, seed, condition).run(schedule)


def simulate_one(design: str, load_point: float, seed: int, *, conditions: tuple[Condition, ...] = CONDITIONS,
                 setup: Setup = SETUP, run_id: str | None = None) -> list[Row]:
    """The rows of one (design, load point, seed) under each condition."""
    run_id = run_id or new_run_id(PATTERN, "sim")
    return [row for c in conditions for row in simulate(design, load_point, seed, c, setup).rows(run_id)]


def _simulate(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    return simulate_one(design, load_point, seed, conditions=params["conditions"], setup=params["setup"],
                        run_id=params["run_id"])


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Sweep DESIGNS x LOAD_POINTS x CONDITIONS x seeds; write `out/sim/results.csv` and run.json; return the CSV.

    `quick` shortens each run (DURATION_S["quick"]); designs, loads, conditions and seeds are unchanged.
    """
    setup = replace(SETUP, duration_s=DURATION_S["quick" if quick else "full"])
    run_id = new_run_id(PATTERN, "sim")
    rows = sweep(_simulate, designs=DESIGNS, load_points=LOAD_POINTS, seeds=range(seeds),
                 params={"run_id": run_id, "setup": setup, "conditions": CONDITIONS}, jobs=jobs, progress=progress)
    parameters = {
        "setup": setup.parameters(),
        "designs": list(DESIGNS),
        "load_points": list(LOAD_POINTS),
        "failure_rates": list(FAILURE_RATES),
        "crash_rates": list(CRASH_RATES),
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
