"""Idempotency scenario: how often does each design charge a payment twice, or charge it without
recording it, when clients time out and retry, the provider misbehaves and workers crash between
recovery points, across load levels?

Designs (`DESIGNS`, as in `reference_impl.idempotency.designs`): `none` (every attempt executes
with a fresh provider token: the deliberately unsafe baseline), `redis` (an atomic claim plus the
stored response; the payment is `ledger.ChargeThenRecord`) and `postgres` (brandur's atomic
phases `started -> charge_created -> finished` plus a completer).

The model, one run per (design, load point, seed); every parameter is a field of `Setup`:

* Clients. Logical payments arrive as a Poisson process at `load_point` x `capacity_rps(setup)`
  for `duration_s`; each has its own `Idempotency-Key` and body (its amount), so its own
  `core.fingerprint`. A share `p_double_click` is clicked twice: a second client sends the same
  key U(0, `double_click_ms`) later. Each client waits `client_timeout_ms` per attempt and retries
  timeouts, dropped connections, 409 and 5xx with `reference_impl.retries.core` (the policy
  `retry_policy`, `max_attempts` attempts at most, `Retry-After` honoured through
  `parse_retry_after` and `honour_retry_after`): the same code the load harness retries with.
  201 and 402, fresh or replayed, end a client; one that runs out of attempts gives up.
* App servers: `workers` worker processes behind one port, each with `slots` request slots
  admitted by the service's FIFO scheduler (`reference_impl.tenancy.core.make_scheduler`). A
  request holds a slot for a handler time (`handler_ms` + exponential `handler_overhead_ms`),
  its store round trips (`redis_rtt_ms`, `pg_rtt_ms`; a statement takes effect when sent) and its
  provider call. A worker keeps running an attempt whose client has gone (wasted work). Each
  attempt goes to a random live worker; with none alive the connection is refused.
* The provider (a mirror of `provider.charge`): one charge per (tenant, token); asking again with
  a token it has seen returns the first outcome. Every call from the service draws one fault:
  `slow` (p_slow: `slow_ms` more), `fail` (p_fail: declined, a failed charge kept) or
  `timeout_after_effect` (p_timeout_after_effect: it charges, then the service gets
  ProviderTimeout, releases the claim and answers 504 with `Retry-After: 1`). A call takes
  `provider_ms` + exponential `provider_jitter_ms`; the charge happens halfway, so a worker that
  dies while waiting leaves the charge made.
* Crashes: at each of the payment's checkpoints (`core.CHARGED`, `core.RECORDED`) the worker
  process dies with probability `p_crash`: every attempt on it is dropped (its client sees a reset)
  and the worker restarts after `restart_ms`. The charge and anything written stay.
* The store (stores.py) is the design's records in memory, driven through the steps of
  reference_impl/idempotency/core.py that the service's stores run (the twin rule): the claim
  step, the payment machine `core.pay_steps`, finish and release guarded by the claim's token. Each
  operation costs the round trips reference_impl/idempotency/round_trips.py declares for the
  design (`redis_rtt_ms`, `pg_rtt_ms` each); a statement takes effect when sent. The lock is
  `lock_timeout_s` (shorter than the service's 90 s default, so that recoveries happen within a
  run); records outlive the run, so no reaper runs. `postgres` runs the completer's pass
  (`completer.run_once`: the same take-over and machine) every `completer_interval_s`: it takes
  over abandoned claims (RECOVER) and resumes them from their recovery point, as its own process,
  where no fault or crash is injected.

A run ends when the last client is done, every worker is idle and (postgres) the completer has
finished every claim (the pass after the last lock ran out). Then the run's history (one `pay` operation per attempt: `ok` for 201, 402 and replays, `fail`
for 409, 422 and refused connections, `info` for timeouts, resets and 504) and the ledger (the
provider's charges, the payment rows) go through `reference_impl.idempotency.invariants.check`.
Metrics per (design, load point, seed), tenant "*":

- `payments`: logical payments (requests); `attempts`: HTTP attempts sent (requests)
- `duplicates_per_10k`: extra effects per 10,000 logical payments: per key, the larger of
  (succeeded charges - 1) and (payment rows - 1), when positive (per_10k)
- `effect_violations_per_10k`: keys `exactly_one_effect` flags, per 10,000 logical payments (per_10k)
- `orphans_per_10k`: `no_orphan_charges` violations (succeeded charges without their one payment
  row, after the completer) per 10,000 logical payments (per_10k)
- `replay_mismatch`: replays whose bytes differ from the key's first answer (`replays_match_first`
  violations; requests)
- `conflicts_pct`, `replays_pct`, `timeouts_pct`: attempts answered 409, answered with a replay,
  or not answered within the client timeout, over attempts (percent)
- `retries_per_request`: attempts beyond each client's first, per logical payment (ratio)
- `gave_up_pct`: logical payments whose clients all gave up without a 201 or 402 (percent)
- `latency_p50`, `latency_p99`: per attempt that got an HTTP answer, from send to answer (ms;
  through the HDR histogram, as the load harness measures)
- `payment_latency_p99`: from a payment's first send to its first 201 or 402 (ms)
- `crashes`: worker crashes (count); `completed_by_completer_per_10k`: claims the completer
  finished, per 10,000 logical payments (per_10k)
- `exactly_one_effect`, `replays_match_first`, `no_orphan_charges`: 1 if the check held (bool);
  `checks_valid`: 1 if all three held (bool)

The live plan, replayed (`aslive_*`). `LIVE_PLAN` holds the live load test's workload, clients,
faults and service (loadtests/idempotency.py and saaslab/live/idempotency.py take theirs from it);
`as_live` turns it into a `Setup` and `simulate_as_live` runs it, so the report can set simulated
beside measured like for like. It is the model above with: `workers` x `slots` of the live service
(2 x 8) and its lock timeout (2 s) and completer interval; arrivals at the load point x the
capacity with nothing armed (`measured_capacity_rps`, as the harness measures it) for the live
run's duration; every payment double-clicked by 2 or 3 clients within 50 ms; clients with the live
timeout, backoff and `max_attempts` (8) and the shared `RetryBudget` (`retry_budget`: a retry after
an unknown outcome spends it, one after a 409 does not; a client it refuses gives up); the
provider's phases (`slow_phase`: slow only from 40% to 60% of the run, 25% of calls, 1500 ms;
before and after, and through the reconcile pass, 10% of calls time out after the charge; none
declines); no random crash but the live run's two one-shot crashes (`crash_at`: at 15% of the
run a random live worker is armed to die at its next `charged`, at 50% at its next
`charge_created`; a crash or restart disarms it); and the reconcile pass (`reconcile_after_s`:
once every client is done, past a lock and a completer pass, one client per payment whose clients
all gave up retries it, without the budget, until a final answer or `max_attempts`). `run` replays
it at the live run's load points and duration (`--quick`: `LIVE_PLAN.quick_load_points` for
`LIVE_PLAN.quick_duration_s`, as `saaslab load --quick`), for the first `AS_LIVE_SEEDS` seeds (all
with `--quick`). What the model still leaves out: the live service's CPU (the model's service is
faster than a small machine's, so at the same load point its rate, and the work a fixed-length slow
phase backs up, are higher) and a crashed worker's real restart time (here `restart_ms`). Rows,
same units as above:

- `aslive_payments`, `aslive_duplicates_per_10k`, `aslive_orphans_per_10k`, `aslive_latency_p99`,
  `aslive_gave_up_pct` (before the reconcile pass, as the live counter), `aslive_retries_per_request`,
  `aslive_crashes`: those metrics of the replay; `aslive_unresolved`: payments still without a
  final answer after the reconcile pass (requests; the live row `unresolved`).

What the designs do under this model, from reading the code it mirrors (the sweep measures how often):

* `none` duplicates whenever an attempt that charged goes unanswered and the client retries (a
  client timeout, a 504 after `timeout_after_effect`, a crash after the charge) and on every
  double click; each 504 or crash after the charge also leaves an orphan charge.
* `redis` never duplicates: a retry either meets the claim (409 while locked, then the stored
  response) or recovers it after the lock runs out and asks the provider again with the same
  token, which returns the first charge; the payment row is unique per charge. But nothing
  durable marks "charged": when the worker crashed after charging, or the provider timed out after
  charging, and the client stops retrying before it recovers the claim, the charge never gets its
  payment row (an orphan; the design has no completer). A Redis failover losing a claim is not
  modelled.
* `postgres` never duplicates and, after the completer, leaves no orphan: the claim stores the
  request's parameters, so the completer resumes an abandoned claim whether or not its client
  comes back, with the same token. It may charge a payment whose client gave up before the charge
  was made (the request was accepted, and the completer carries it through).

`run` sweeps DESIGNS x LOAD_POINTS x seeds (`DURATION_S`: 6 s of arrivals per run, 1.5 s with
`--quick`), and the live plan as above; 95% confidence intervals come from the seeds.
`payment_body` is the bytes both faces send.

The package: plan.py (parameters, the live plan, the workload), lab.py (clients, provider, ledger, the
run), workers.py (worker processes), stores.py (the simulated store), results.py (the rows), and here
the entry points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from saaslab.results import Row, new_run_id, write_run
from scenarios.idempotency.lab import Lab
from scenarios.idempotency.plan import (
    AS_LIVE,
    AS_LIVE_METRICS,
    AS_LIVE_SEEDS,
    CURRENCY,
    DESIGNS,
    DURATION_S,
    EPOCH_US,
    LIVE_PLAN,
    LOAD_POINTS,
    PATTERN,
    PER_10K,
    SETUP,
    TARGET,
    TENANT,
    LivePlan,
    Setup,
    as_live,
    capacity_rps,
    measured_capacity_rps,
    payment_body,
    workload,
)
from scenarios.idempotency.results import RunResult, Stats
from scenarios.kernel.sweep import sweep
from scenarios.kernel.workload import arrivals

__all__ = [
    "AS_LIVE", "AS_LIVE_METRICS", "AS_LIVE_SEEDS", "CURRENCY", "DESIGNS", "DURATION_S", "EPOCH_US", "LIVE_PLAN",
    "LOAD_POINTS", "PATTERN", "PER_10K", "SETUP", "TARGET", "TENANT", "Lab", "LivePlan", "RunResult", "Setup",
    "Stats", "as_live", "capacity_rps", "measured_capacity_rps", "payment_body", "run", "simulate",
    "simulate_as_live", "simulate_one", "workload",
]


def simulate(design: str, load_point: float, seed: int, setup: Setup = SETUP, *,
             schedule: list[tuple[int, str]] | None = None) -> RunResult:
    """One run of one design at one load point and seed (the module docstring describes it);
    `schedule` gives the payments' arrival times instead of the Poisson workload."""
    return Lab(design, setup, load_point, seed).run(schedule)


def simulate_one(design: str, load_point: float, seed: int, *, setup: Setup = SETUP,
                 run_id: str | None = None) -> list[Row]:
    """One run's rows (metrics of the module docstring)."""
    return simulate(design, load_point, seed, setup).rows(run_id or new_run_id(PATTERN, "sim"))


def simulate_as_live(design: str, load_point: float, seed: int, *, setup: Setup | None = None,
                     run_id: str | None = None) -> list[Row]:
    """One run of the live plan (`setup`, default `as_live()`): the `aslive_*` rows. The payments arrive at
    `load_point` x the capacity measured as the live harness does (`measured_capacity_rps`)."""
    setup = setup if setup is not None else as_live()
    schedule = arrivals(workload(load_point, setup, capacity=measured_capacity_rps), seed)
    result = simulate(design, load_point, seed, setup, schedule=schedule)
    rows = [replace(r, metric=AS_LIVE + r.metric) for r in result.rows(run_id or new_run_id(PATTERN, "sim"))
            if r.metric in AS_LIVE_METRICS]
    unresolved = result.stats.gave_up - result.stats.reconciled
    return [*rows, replace(rows[0], metric=f"{AS_LIVE}unresolved", value=float(unresolved), unit="requests")]


def _simulate(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    """A sweep cell: the module's own experiment where the sweep has the load point, the live plan's where the
    live run has it."""
    rows = []
    if load_point in params["load_points"]:
        rows += simulate_one(design, load_point, seed, setup=params["setup"], run_id=params["run_id"])
    live: _AsLive = params["as_live"]
    if load_point in live.load_points and seed < live.seeds:
        rows += simulate_as_live(design, load_point, seed, setup=live.setup, run_id=params["run_id"])
    return rows


@dataclass(frozen=True)
class _AsLive:
    """Where a sweep replays the live plan."""

    setup: Setup
    load_points: tuple[float, ...]
    seeds: int


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Sweep DESIGNS x LOAD_POINTS x seeds, and the live plan (`as_live`) at the live run's load points and
    duration (quick: `LIVE_PLAN.quick_*`, as `saaslab load --quick`); write `out/sim/results.csv` and run.json;
    return the CSV.

    `quick` shortens each run (DURATION_S["quick"]); designs, load points and seeds are unchanged.
    """
    setup = replace(SETUP, duration_s=DURATION_S["quick" if quick else "full"])
    live = _AsLive(as_live(plan=LIVE_PLAN, quick=quick),
                   LIVE_PLAN.quick_load_points if quick else LIVE_PLAN.load_points,
                   seeds if quick else min(seeds, AS_LIVE_SEEDS))
    run_id = new_run_id(PATTERN, "sim")
    load_points = tuple(LOAD_POINTS)
    cells = tuple(sorted({*load_points, *live.load_points}))
    rows = sweep(_simulate, designs=DESIGNS, load_points=cells, seeds=range(seeds),
                 params={"run_id": run_id, "setup": setup, "load_points": load_points, "as_live": live}, jobs=jobs,
                 progress=progress)
    parameters = {
        "setup": setup.parameters(),
        "as_live": {"setup": {**live.setup.parameters(), "measured_capacity_rps": measured_capacity_rps(live.setup)},
                    "load_points": list(live.load_points), "seeds": list(range(live.seeds)),
                    "plan": asdict(LIVE_PLAN)},
        "designs": list(DESIGNS),
        "load_points": list(load_points),
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
