"""`saaslab load ratelimit`: the noisy neighbour and the race, live, per algorithm, every decision checked.

Each algorithm gets a service of its own (a uvicorn subprocess with `WORKERS` workers, lab mode on,
`ratelimit=<algorithm>`). Against it Locust replays the simulation's noisy neighbour
(`scenarios.ratelimit.noisy_neighbour` under `NEIGHBOUR_POLICY`, open model, the seeded arrivals
the simulation decides) at each load point, then the race burst (`LIVE_RACE_REQUESTS` requests of
one tenant at once, at a limit of `LIVE_RACE_POLICY`). Tenants get the policy as their `limits`.

In lab mode the service reports each decision's time on the limiter's own clock
(`Saaslab-Decided-At`), so the history holds every decision as the limiter made it and
`invariants.no_over_admission` and `quiet_never_limited` judge the whole run. The limiter fails
closed here, with a generous timeout: a fail-open admission would be one the limiter never
decided, which no checker could judge; an undecided answer is an error in the rows instead.

Rows (source "live", design = algorithm, load_point = the noisy tenant's offered rate over its
quota), per tenant (`noisy`, `quiet1`..`quiet4`) and for the run ("*"):
`rejected_rate` (fraction of answers that were 429), `latency_p99` and `latency_p50` (ms, every
answer, 200 or 429, from its intended send time), `offered`, `admitted`, `rejected` (requests);
for the run also `dropped`, `errors`, `timeouts`, `undecided` (requests), `sent_rate`,
`target_rate` (rps) and `send_lag_p50`, `send_lag_p99`, `send_lag_max` (ms: how late the generator
launched its sends); per Locust process (tenant `worker-<i>`, `harness.worker_rows`) its `scheduled`,
`sent`, `target_rate`, `sent_rate` and send lag. The race goes to run.json (`race`), its decisions
to the history. With `unsafe`, the deliberately unsafe `naive` runs in the same harness into
`<out>/unsafe/live/`, where the checker must fail.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.common.openmodel import DEFAULT_MAX_IN_FLIGHT, OpenModelResult
from loadtests.common.provision import ProvisioningError
from loadtests.common.runconfig import LoadRun
from reference_impl.ratelimit.invariants import check_history, no_over_admission, write_check
from saaslab.history import CheckResult, Op, save
from saaslab.live.harness import (
    CLIENT_TIMEOUT_S,
    LocustRun,
    Progress,
    check_processes,
    refuse_unmodelled,
    run_locust,
    send_lag_rows,
    served_settings,
    service,
    worker_line,
    worker_rows,
)
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios import ratelimit as scenario
from scenarios.kernel.metrics import RunKey

LOCUSTFILE = "ratelimit"
LIVE_SEED = 1
WORKERS = 2
"""Service worker processes: the race is decided side by side in both."""
LOAD_POINTS = (1.0, 2.0, 10.0)
QUICK_DESIGNS = ("token_bucket", "fixed_window")
QUICK_LOAD_POINTS = (10.0,)
UNSAFE = "naive"
LIMITER_SETTINGS = {"ratelimit_failure": "closed", "ratelimit_timeout_ms": 1000}
"""Every admission decided by the limiter (see the module docstring), never a busy machine's timeout."""
TENANTS = (scenario.NOISY, *scenario.QUIET)
POLICY = scenario.NEIGHBOUR_POLICY
QUOTA_RPS = POLICY.requests / POLICY.window_s


@dataclass
class RateLimitPlan:
    designs: tuple[str, ...]
    load_points: tuple[float, ...]
    duration_s: float
    processes: int = 1
    """One Locust process drives the 240 requests/s of load point 10 and leaves the cores to the service; more
    (`--processes N`) share the schedule. The race always runs in one."""
    seed: int = LIVE_SEED


def ratelimit_plan(settings: Settings, *, quick: bool, host: str | None, rate: float | None,
                   duration: float | None, processes: int = 1) -> RateLimitPlan:
    """Every strict algorithm at load points 1, 2 and 10 for the simulation's neighbour duration.

    Quick: `QUICK_DESIGNS` at load point 10 for the quick simulation's duration. `rate` is the
    noisy tenant's offered rate (requests/s; the load point is it over the quota), `duration` the
    seconds of each run; with `host` the one algorithm is the settings' (the service's own).
    """
    if host is not None:
        designs: tuple[str, ...] = (settings.ratelimit,)
        if settings.ratelimit == "off":
            raise ServiceError(f"the service at {host} runs no rate limiter: restart it with SAASLAB_RATELIMIT set "
                               f"to an algorithm")
    else:
        designs = QUICK_DESIGNS if quick else tuple(d for d in scenario.DESIGNS if d != UNSAFE)
    if rate is not None:
        load_points: tuple[float, ...] = (round(rate / QUOTA_RPS, 6),)
    else:
        load_points = QUICK_LOAD_POINTS if quick else LOAD_POINTS
    durations = scenario.QUICK_DURATIONS_S if quick else scenario.DURATIONS_S
    return RateLimitPlan(designs, load_points, duration if duration is not None else durations["neighbour"],
                         check_processes(processes))


# ---------------------------------------------------------------------------------------------
# Rows


def _statuses(run: LocustRun) -> dict[str, Counter[int]]:
    out: dict[str, Counter[int]] = {t: Counter() for t in TENANTS}
    for o in run.outputs:
        for tenant, counts in o["summary"]["statuses"].items():
            out.setdefault(tenant, Counter()).update({int(s): n for s, n in counts.items()})
    return out


def _rate(rejected: int, admitted: int) -> float:
    return rejected / (rejected + admitted) if rejected + admitted else math.nan


def _admitted(c: Counter[int]) -> int:
    return sum(n for s, n in c.items() if 200 <= s < 300)


def neighbour_rows(key: RunKey, result: OpenModelResult, statuses: dict[str, Counter[int]],
                   undecided: int) -> list[Row]:
    """The report's rows (module docstring) from one noisy-neighbour run."""
    rows: list[Row] = []
    pooled = LatencyHistogram()
    for t in TENANTS:
        c, s = result.tenants[t], statuses[t]
        pooled.add(c.latency)
        admitted, rejected = _admitted(s), s.get(429, 0)
        rows += [
            key.row(t, "rejected_rate", _rate(rejected, admitted), "fraction"),
            key.row(t, "latency_p99", c.latency.percentile_ms(99), "ms"),
            key.row(t, "latency_p50", c.latency.percentile_ms(50), "ms"),
            key.row(t, "offered", c.offered, "requests"),
            key.row(t, "admitted", admitted, "requests"),
            key.row(t, "rejected", rejected, "requests"),
        ]
    total = [result.tenants[t] for t in TENANTS]
    admitted = sum(_admitted(statuses[t]) for t in TENANTS)
    rejected = sum(statuses[t].get(429, 0) for t in TENANTS)
    return rows + [
        key.row(ALL_TENANTS, "rejected_rate", _rate(rejected, admitted), "fraction"),
        key.row(ALL_TENANTS, "latency_p99", pooled.percentile_ms(99), "ms"),
        key.row(ALL_TENANTS, "latency_p50", pooled.percentile_ms(50), "ms"),
        key.row(ALL_TENANTS, "offered", sum(c.offered for c in total), "requests"),
        key.row(ALL_TENANTS, "admitted", admitted, "requests"),
        key.row(ALL_TENANTS, "rejected", rejected, "requests"),
        key.row(ALL_TENANTS, "dropped", result.dropped, "requests"),
        key.row(ALL_TENANTS, "errors", sum(c.errors for c in total), "requests"),
        key.row(ALL_TENANTS, "timeouts", sum(c.timeouts for c in total), "requests"),
        key.row(ALL_TENANTS, "undecided", undecided, "requests"),
        key.row(ALL_TENANTS, "sent_rate", result.sent_rate, "rps"),
        key.row(ALL_TENANTS, "target_rate", result.target_rate, "rps"),
        *send_lag_rows(key, result),
    ]


def _undecided(history: Iterable[Op]) -> int:
    """Answers of the schedule without a decision (no answer, or the limiter could not decide)."""
    return sum(1 for op in history if op.type == "info")


def _summary(results: Sequence[CheckResult]) -> str:
    return ", ".join(f"{r.name} {'valid' if r.valid else 'VIOLATED'} ({r.checked} checked, {r.violations} "
                     "violations)" for r in results)


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class Measured:
    rows: list[Row]
    history: list[Op]
    runs: list[dict[str, Any]]
    race: dict[str, dict[str, Any]]




def _measure(settings: Settings, plan: RateLimitPlan, *, run_id: str, token: str, logs: Path, host: str | None,
             progress: Progress | None) -> Measured:
    """The noisy neighbour at each load point and the race, for each design of `plan`."""
    m = Measured([], [], [], {})
    budget = plan.duration_s + POLICY.window_s + CLIENT_TIMEOUT_S
    for design in plan.designs:
        with service(settings, token=token, overrides={"ratelimit": design, **LIMITER_SETTINGS}, workers=WORKERS,
                     log_path=logs / f"service-{design}.log", host=host, progress=progress,
                     describe=f"ratelimit={design}, {WORKERS} workers") as svc:
            try:
                for lp in plan.load_points:
                    tag = f"{design}-lp{lp:g}"
                    run = LoadRun(label=tag, load_point=lp, seed=plan.seed, design=design,
                                  workload={"duration_s": plan.duration_s})
                    nn = run_locust(svc.url, LOCUSTFILE, "NoisyNeighbour", run=run, token=token,
                                    processes=plan.processes, budget_s=budget,
                                    logs=logs, progress=progress)
                    key = RunKey(run_id=run_id, pattern=scenario.PATTERN, design=design, seed=plan.seed,
                                 load_point=lp, source="live")
                    result, statuses = nn.open_model(), _statuses(nn)
                    rows = [*neighbour_rows(key, result, statuses, _undecided(nn.history)), *worker_rows(key, nn)]
                    m.rows += rows
                    m.history += nn.history
                    got = {(r.tenant, r.metric): r.value for r in rows}
                    quiet_rejected = sum(statuses[q].get(429, 0) for q in scenario.QUIET)
                    m.runs.append({"design": design, "load_point": lp, "wall_s": round(nn.wall_s, 1),
                                   "target_rate": result.target_rate, "sent_rate": result.sent_rate,
                                   "dropped": result.dropped, "errors": got[(ALL_TENANTS, "errors")],
                                   "timeouts": got[(ALL_TENANTS, "timeouts")],
                                   "undecided": got[(ALL_TENANTS, "undecided")],
                                   "noisy_rejected_rate": got[(scenario.NOISY, "rejected_rate")],
                                   "quiet_rejected": quiet_rejected,
                                   "latency_p99_ms": got[(ALL_TENANTS, "latency_p99")]})
                    if progress:
                        progress(f"{tag}: noisy refused {got[(scenario.NOISY, 'rejected_rate')]:.1%}, quiet refused "
                                 f"{quiet_rejected}; p99 noisy {got[(scenario.NOISY, 'latency_p99')]:.1f} ms, all "
                                 f"{got[(ALL_TENANTS, 'latency_p99')]:.1f} ms; sent {result.sent_rate:.1f}/s of "
                                 f"{result.target_rate:.1f}/s, dropped {result.dropped}, errors "
                                 f"{got[(ALL_TENANTS, 'errors')]:.0f}")
                        if plan.processes > 1:
                            progress(f"{tag}, {worker_line(nn)}")
                race = run_locust(svc.url, LOCUSTFILE, "RaceBurst", token=token,
                                  run=LoadRun(label=f"{design}-race", design=design,
                                              probe_size=scenario.LIVE_RACE_REQUESTS),
                                  processes=1, budget_s=CLIENT_TIMEOUT_S, logs=logs, progress=progress)
            except ProvisioningError as e:
                raise ServiceError(str(e)) from None
        m.history += race.history
        summary = race.outputs[0]["summary"]
        verdict = no_over_admission(race.history)
        m.race[design] = {k: summary[k] for k in ("requests", "admitted", "refused", "statuses", "burst_s")}
        m.race[design]["no_over_admission"] = verdict.valid
        if progress:
            progress(f"{design} race: {summary['requests']} requests at once across {WORKERS} workers at a limit of "
                     f"{scenario.LIVE_RACE_POLICY.requests}: admitted {summary['admitted']}, refused "
                     f"{summary['refused']}; no_over_admission {'valid' if verdict.valid else 'VIOLATED'}")
    return m


def _write(live: Path, plan: RateLimitPlan, m: Measured, *, run_id: str, quick: bool, host: str | None,
           started: float, progress: Progress | None,
           served: dict[str, Any] | None = None) -> tuple[Path, list[CheckResult]]:
    save(live / "history.jsonl", m.history)
    results = check_history(m.history)
    write_check(live / "check.json", results)
    if progress:
        progress(f"ratelimit invariants ({', '.join(plan.designs)}): {_summary(results)}")
    workload = scenario.noisy_neighbour(0.0, duration_s=plan.duration_s, policy=POLICY)
    parameters = {
        "designs": list(plan.designs),
        "load_points": list(plan.load_points),
        "duration_s": plan.duration_s,
        "seed": plan.seed,
        "quick": quick,
        "workers": WORKERS,
        "policy": {"requests": POLICY.requests, "window_s": POLICY.window_s},
        "quota_rps": QUOTA_RPS,
        "quiet_multiple": workload.params["quiet_multiple"],
        "tenants": list(TENANTS),
        "offered_rps": {f"{lp:g}": QUOTA_RPS * (lp + scenario.QUIET_MULTIPLE * len(scenario.QUIET))
                        for lp in plan.load_points},
        "start": "on a window boundary of the limiter's clock, after one project per tenant",
        "race": {"policy": {"requests": scenario.LIVE_RACE_POLICY.requests,
                            "window_s": scenario.LIVE_RACE_POLICY.window_s},
                 "requests": scenario.LIVE_RACE_REQUESTS, "results": m.race},
        "limiter": LIMITER_SETTINGS,
        "host": host or "started per design",
        **({"served": served} if served is not None else {}),
        "locust_processes": plan.processes,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "max_in_flight": DEFAULT_MAX_IN_FLIGHT,
        "measured": m.runs,
        "checks": {r.name: r.valid for r in results},
        "wall_s": round(time.monotonic() - started, 1),
    }
    csv_path = write_run(live, run_id=run_id, pattern=scenario.PATTERN, source="live", rows=m.rows,
                         parameters=parameters)
    return csv_path, results


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None,
        rate: float | None = None, duration: float | None = None, progress: Progress | None = None,
        unsafe: bool = False, processes: int = 1, seed: int = LIVE_SEED) -> Path:
    """The noisy neighbour and the race per strict algorithm into `<out>/live/`; returns its results.csv.

    `rate` (the noisy tenant's requests/s) and `duration` (seconds per run) override the workload;
    `processes` Locust processes share the noisy neighbour's schedule;
    `unsafe` also runs `naive` the same way into `<out>/unsafe/live/` (its checks are expected to fail).
    """
    token = settings.admin_token or secrets.token_urlsafe(24)
    served: dict[str, Any] | None = None
    if host is not None:
        # The service's own algorithm is measured; its limiter must decide every admission as ours would.
        settings, served = served_settings(settings, host, token)
        refuse_unmodelled(host, served, LIMITER_SETTINGS)
    plan = ratelimit_plan(settings, quick=quick, host=host, rate=rate, duration=duration, processes=processes)
    plan.seed = seed
    runs = [(out / "live", plan, host)]
    if unsafe:
        runs.append((out / "unsafe" / "live", RateLimitPlan((UNSAFE,), plan.load_points, plan.duration_s,
                                                           plan.processes, seed), None))
    csv_paths = []
    for live, p, h in runs:
        started = time.monotonic()
        run_id = new_run_id(scenario.PATTERN, "live")
        measured = _measure(settings, p, run_id=run_id, token=token, logs=live / "logs", host=h, progress=progress)
        csv_paths.append(_write(live, p, measured, run_id=run_id, quick=quick, host=h, started=started,
                                progress=progress, served=served if h is not None else None)[0])
    return csv_paths[0]
