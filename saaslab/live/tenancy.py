"""`saaslab load tenancy`: the noisy neighbour and the cross-tenant probe, live.

Each scheduler design gets a service of its own (a uvicorn subprocess with lab mode
on, `SLOTS` scheduler slots and the delay fault at `tenancy.query`, so every request holds a slot
for `SERVICE_MS`: the server the simulation models). Against it Locust replays the canonical
noisy-neighbour schedule (open model, the very workload and seeded arrivals the simulation
replays) and then its solo baseline (the same traffic without the burst). Around each run the
service's gate counters are read from /metrics, so the rows also say how long a request really
held its slot and how much of its latency no slot accounts for: the numbers the simulation's
`SLOT_OVERHEAD_MS` and `OUTSIDE_SLOT_MS` are calibrated from. Once per run the cross-tenant probe
runs too. Everything lands in `<out>/live/`: `results.csv` and `run.json` (the simulation's
metric names, source "live"), `history.jsonl`, `state.json` (objects read back per tenant) and
`check.json` (the invariants).

Locust runs headless (`saaslab.live.harness`), in one process unless `processes` asks for more (`saaslab
load tenancy --processes N`: Locust's distributed mode, each worker sending its share of the schedule). One
open-model process drives a few hundred requests per second, and on a 2-core machine the service,
PostgreSQL and Redis need the rest; more processes are for higher rates or more cores. The rows say,
per worker, what it sent against its share and how late (`worker_rows`), so a generator short of CPU
shows. The cross-tenant probe runs in one process whatever `processes` says: it asks about isolation,
not rate.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.common.openmodel import DEFAULT_MAX_IN_FLIGHT, OpenModelResult
from loadtests.common.provision import Admin, ProvisioningError
from loadtests.common.runconfig import LoadRun
from reference_impl.tenancy.invariants import KINDS, check, merge_states, write_check
from saaslab.history import CheckResult, Op, save
from saaslab.live.harness import (
    CLIENT_TIMEOUT_S,
    LocustRun,
    Progress,
    Service,
    check_processes,
    read_metrics,
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
from saaslab.stats import jain_index
from scenarios import tenancy as scenario
from scenarios.kernel.metrics import RunKey

LOCUSTFILE = "tenancy"
LIVE_SEED = 1
FAULT_POINT = "tenancy.query"
DELAY_MS = round(scenario.SERVICE_MS)
"""The lab-mode delay at `FAULT_POINT`: the part of a slot hold the simulation calls `SERVICE_MS`."""
PROBE_OBJECTS = 6



MAX_PAGES = 10_000


def read_state(base_url: str, api_keys: Mapping[str, str], *, page_size: int = 100) -> dict[str, Any]:
    """The objects each tenant owns, read through the public API with that tenant's key.

    `api_keys` maps tenant id -> API key. Lists are followed cursor by cursor (bounded).
    """
    state: dict[str, Any] = {"tenants": sorted(api_keys), "projects": {}, "payments": {}}
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for tenant_id, key in api_keys.items():
            for kind in KINDS:
                ids: list[str] = []
                cursor: str | None = None
                for _ in range(MAX_PAGES):
                    params: dict[str, Any] = {"limit": page_size}
                    if cursor:
                        params["cursor"] = cursor
                    resp = client.get(f"/v1/{kind}s", params=params, headers={"Authorization": f"Bearer {key}"})
                    resp.raise_for_status()
                    body = resp.json()
                    ids += [str(i["id"]) for i in body.get("items") or []]
                    cursor = body.get("next_cursor")
                    if not cursor:
                        break
                state[f"{kind}s"][tenant_id] = ids
    return state


def _service(settings: Settings, *, token: str, scheduler: str, isolation: str, log_path: Path,
             host: str | None, progress: Progress | None) -> AbstractContextManager[Service]:
    """The service the simulation models: `SLOTS` scheduler slots under `scheduler`."""
    return service(settings, token=token, log_path=log_path, host=host, progress=progress,
                   overrides={"scheduler": scheduler, "isolation": isolation, "scheduler_slots": scenario.SLOTS,
                        "bulkhead_per_tenant": scenario.BULKHEAD_PER_TENANT},
                   describe=f"scheduler={scheduler}, isolation={isolation}")


@dataclass
class TenancyPlan:
    designs: tuple[str, ...]
    load_points: tuple[float, ...]
    burst: dict[str, float]
    solo: dict[str, Any]
    processes: int = 1
    seed: int = LIVE_SEED
    parameters: dict[str, Any] = field(default_factory=dict)


def tenancy_plan(settings: Settings, *, quick: bool, host: str | None, rate: float | None,
                 duration: float | None, processes: int = 1) -> TenancyPlan:
    """The simulation's canonical workload (quick: one load point), unless `rate`/`duration` override it."""
    designs = scenario.DESIGNS if host is None else (settings.scheduler,)
    if rate is not None:
        load_points: tuple[float, ...] = (round(rate / scenario.CAPACITY_RPS, 6),)
    else:
        load_points = (0.5,) if quick else scenario.LOAD_POINTS
    if duration is not None:
        burst = {"duration_s": duration, "burst_start_s": duration / 3, "burst_length_s": duration / 3}
    else:
        burst = {"duration_s": scenario.DURATION_S, "burst_start_s": scenario.BURST_START_S,
                 "burst_length_s": scenario.BURST_LENGTH_S}
    solo_s = min(burst["duration_s"], scenario.SOLO_DURATION_S)
    return TenancyPlan(designs, load_points, burst, {"duration_s": solo_s, "burst": False},
                       check_processes(processes))


def _pooled(result: OpenModelResult, names: Iterable[str]) -> LatencyHistogram:
    h = LatencyHistogram()
    for n in names:
        h.add(result.tenants[n].latency)
    return h


def tenancy_rows(key: RunKey, burst: OpenModelResult, solo: OpenModelResult) -> list[Row]:
    """The simulation's rows (`scenarios.tenancy.simulate_one`) from a measured run, plus the generator's health
    (`send_lag_*` of the burst, `solo_send_lag_*` of the solo baseline)."""
    duration = burst.duration_s
    tenants = [scenario.NOISY, *scenario.QUIET]
    rows = []
    for t in tenants:
        c = burst.tenants[t]
        rows += [
            key.row(t, "latency_p50", c.latency.percentile_ms(50), "ms"),
            key.row(t, "latency_p99", c.latency.percentile_ms(99), "ms"),
            key.row(t, "offered", c.offered, "requests"),
            key.row(t, "completed", c.completed, "requests"),
            key.row(t, "goodput", c.within_slo / duration, "rps"),
        ]

    quiet_p99 = _pooled(burst, scenario.QUIET).percentile_ms(99)
    solo_quiet_p99 = _pooled(solo, scenario.QUIET).percentile_ms(99)
    served = [burst.tenants[t].within_slo / burst.tenants[t].offered if burst.tenants[t].offered else float("nan")
              for t in tenants]
    total = [burst.tenants[t] for t in tenants]
    return rows + [
        key.row(ALL_TENANTS, "quiet_p99", quiet_p99, "ms"),
        key.row(ALL_TENANTS, "noisy_p99", burst.tenants[scenario.NOISY].latency.percentile_ms(99), "ms"),
        key.row(ALL_TENANTS, "solo_quiet_p99", solo_quiet_p99, "ms"),
        key.row(ALL_TENANTS, "quiet_p99_vs_solo", quiet_p99 / solo_quiet_p99, "ratio"),
        key.row(ALL_TENANTS, "jain_index", jain_index([min(1.0, s) for s in served]), "ratio"),
        key.row(ALL_TENANTS, "goodput", sum(c.within_slo for c in total) / duration, "rps"),
        key.row(ALL_TENANTS, "dropped", burst.dropped, "requests"),
        key.row(ALL_TENANTS, "sent_rate", burst.sent_rate, "rps"),
        key.row(ALL_TENANTS, "target_rate", burst.target_rate, "rps"),
        key.row(ALL_TENANTS, "errors", sum(c.errors for c in total), "requests"),
        key.row(ALL_TENANTS, "timeouts", sum(c.timeouts for c in total), "requests"),
        *send_lag_rows(key, burst),
        *send_lag_rows(key, solo, prefix="solo_"),
    ]


GATE_COUNTERS = {"holds": "saaslab_scheduler_holds_total", "hold_s": "saaslab_scheduler_hold_seconds_total",
                 "hold_s2": "saaslab_scheduler_hold_seconds_squared_total",
                 "wait_s": "saaslab_scheduler_wait_seconds_total"}


@dataclass(frozen=True)
class GateCounters:
    """The service's scheduler-gate counters at one moment; a difference of two covers a run."""

    holds: float
    """Slots given back."""
    hold_s: float
    """Their holds, grant to release, summed."""
    hold_s2: float
    """The squares of their holds, summed."""
    wait_s: float
    """Time granted requests queued for their slot."""

    def __sub__(self, other: GateCounters) -> GateCounters:
        return GateCounters(self.holds - other.holds, self.hold_s - other.hold_s, self.hold_s2 - other.hold_s2,
                            self.wait_s - other.wait_s)


def read_gate(url: str) -> GateCounters:
    """The gate's counters from the service's /metrics."""
    samples = read_metrics(url)
    missing = [name for name in GATE_COUNTERS.values() if name not in samples]
    if missing:
        raise ServiceError(f"{url}/metrics has no {', '.join(missing)}: is the service an older version?")
    return GateCounters(**{field: samples[name] for field, name in GATE_COUNTERS.items()})


def slot_rows(key: RunKey, gate: GateCounters, result: OpenModelResult, *, prefix: str = "") -> list[Row]:
    """Where one run's request time went, from the gate's counters over the run and the client's latencies.

    `slot_hold_ms` is the mean time a request held its slot (the simulation's service time) and
    `slot_hold_sd_ms` its standard deviation, `service_overhead_ms` the mean less the injected
    delay, and `outside_slot_ms` the client's
    total latency less all queueing for and holding of slots, per completed request: what no
    slot accounts for (HTTP on both sides, the auth middleware and its Redis round trip, Locust
    itself). Totals rather than means, because the gate also counts the few requests that set
    the run up (they never queue), which would otherwise dilute the burst's long mean wait.
    `prefix` names the run ("solo_" for the baseline). With another client on the service
    (`--host`) its requests count too.
    """
    client = _pooled(result, result.tenants)
    if gate.holds <= 0 or client.count == 0:
        return []
    hold_ms = gate.hold_s / gate.holds * 1000
    sd_ms = math.sqrt(max(0.0, gate.hold_s2 / gate.holds - (gate.hold_s / gate.holds) ** 2)) * 1000
    outside_ms = client.mean_ms() - (gate.wait_s + gate.hold_s) * 1000 / client.count
    return [
        key.row(ALL_TENANTS, f"{prefix}slot_hold_ms", hold_ms, "ms"),
        key.row(ALL_TENANTS, f"{prefix}slot_hold_sd_ms", sd_ms, "ms"),
        key.row(ALL_TENANTS, f"{prefix}service_overhead_ms", hold_ms - DELAY_MS, "ms"),
        key.row(ALL_TENANTS, f"{prefix}outside_slot_ms", outside_ms, "ms"),
    ]


def _noisy_run(label: str, load_point: float, seed: int, workload: Mapping[str, Any]) -> LoadRun:
    return LoadRun(label=label, load_point=load_point, seed=seed, workload=dict(workload))


def _probe(svc: Service, *, label: str, processes: int, logs: Path, progress: Progress | None) -> LocustRun:
    # The probe asks about isolation, not speed: no injected delay.
    with Admin(svc.url, svc.token) as admin:
        admin.clear_faults()
    return run_locust(svc.url, LOCUSTFILE, "CrossTenantProbe", run=LoadRun(label=label, probe_size=PROBE_OBJECTS),
                      token=svc.token, processes=processes, budget_s=30,
                      logs=logs, progress=progress)


def _write_checked(live: Path, history: list[Op], states: list[dict[str, Any]]) -> list[CheckResult]:
    save(live / "history.jsonl", history)
    state = merge_states(states)
    (live / "state.json").write_text(json.dumps(state))
    results = check(history, state)
    write_check(live / "check.json", results)
    return results


def _summary(results: list[CheckResult]) -> str:
    return ", ".join(f"{r.name} {'valid' if r.valid else 'VIOLATED'}" for r in results)


def run_probe(settings: Settings, out: Path, *, isolation: str | None = None, host: str | None = None,
              processes: int = 1, progress: Progress | None = None) -> list[CheckResult]:
    """The cross-tenant probe alone against a service with `isolation` (default: the settings').

    Writes `out/live/history.jsonl`, `state.json` and `check.json` (so `saaslab check tenancy
    --out OUT` re-checks it) and returns the verdicts. With isolation "leaky" they must fail.
    """
    live = out / "live"
    logs = live / "logs"
    token = settings.admin_token or secrets.token_urlsafe(24)
    if host is not None:
        settings, _ = served_settings(settings, host, token)
    design = isolation or settings.isolation
    with _service(settings, token=token, scheduler=settings.scheduler, isolation=design,
                 log_path=logs / f"service-{design}.log", host=host, progress=progress) as svc:
        try:
            run = _probe(svc, label=f"probe-{design}", processes=processes, logs=logs, progress=progress)
            state = read_state(svc.url, run.api_keys)
        except ProvisioningError as e:
            raise ServiceError(str(e)) from None
    results = _write_checked(live, run.history, [state])
    if progress:
        progress(f"probe against isolation={design}: {_summary(results)}")
    return results


def modelled_service(settings: Settings, host: str, token: str) -> tuple[Settings, dict[str, Any]]:
    """The settings of the service at `host` (`served_settings`), refused unless the simulation models them.

    Its scheduler and isolation are its own (the run measures those); its slots, and the bulkhead's
    per-tenant cap, must be the simulation's `SLOTS` and `BULKHEAD_PER_TENANT`, which its workload and
    capacity are built on.
    """
    settings, served = served_settings(settings, host, token)
    modelled: dict[str, Any] = {"scheduler_slots": scenario.SLOTS}
    if settings.scheduler == "bulkhead":
        modelled["bulkhead_per_tenant"] = scenario.BULKHEAD_PER_TENANT
    refuse_unmodelled(host, served, modelled)
    return settings, served


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None,
        rate: float | None = None, duration: float | None = None, progress: Progress | None = None,
        unsafe: bool = False, processes: int = 1, seed: int = LIVE_SEED) -> Path:
    """The noisy neighbour per scheduler design (with its solo baseline) and the cross-tenant probe.

    `rate` (requests/s before the burst) and `duration` (seconds) override the canonical workload;
    `processes` Locust processes share the open-model schedule (each sends every N-th arrival);
    `unsafe` also probes a service with the deliberately leaky isolation design, into
    `<out>/unsafe/live/` (its checks are expected to fail).
    """
    started = time.monotonic()
    token = settings.admin_token or secrets.token_urlsafe(24)
    served: dict[str, Any] | None = None
    if host is not None:
        settings, served = modelled_service(settings, host, token)
    plan = tenancy_plan(settings, quick=quick, host=host, rate=rate, duration=duration, processes=processes)
    plan.seed = seed
    live = out / "live"
    logs = live / "logs"
    run_id = new_run_id(scenario.PATTERN, "live")
    rows: list[Row] = []
    history: list[Op] = []
    states: list[dict[str, Any]] = []
    measured: list[dict[str, Any]] = []
    budget = plan.burst["duration_s"] + CLIENT_TIMEOUT_S
    for design in plan.designs:
        with _service(settings, token=token, scheduler=design, isolation=settings.isolation,
                     log_path=logs / f"service-{design}.log", host=host, progress=progress) as svc:
            try:
                with Admin(svc.url, token) as admin:
                    admin.clear_faults()
                    admin.arm_fault(FAULT_POINT, "delay", delay_ms=DELAY_MS)
                for lp in plan.load_points:
                    tag = f"{design}-lp{lp:g}"
                    before = read_gate(svc.url)
                    burst = run_locust(svc.url, LOCUSTFILE, "NoisyNeighbour", token=token,
                                       run=_noisy_run(f"{tag}-burst", lp, plan.seed, plan.burst),
                                       processes=plan.processes,
                                       budget_s=budget, logs=logs, progress=progress)
                    between = read_gate(svc.url)
                    solo = run_locust(svc.url, LOCUSTFILE, "NoisyNeighbour", token=token,
                                      run=_noisy_run(f"{tag}-solo", lp, plan.seed, plan.solo),
                                      processes=plan.processes,
                                      budget_s=plan.solo["duration_s"] + CLIENT_TIMEOUT_S, logs=logs,
                                      progress=progress)
                    after = read_gate(svc.url)
                    key = RunKey(run_id=run_id, pattern=scenario.PATTERN, design=design, seed=plan.seed,
                                 load_point=lp, source="live")
                    b, s = burst.open_model(), solo.open_model()
                    point_rows = [*tenancy_rows(key, b, s), *slot_rows(key, between - before, b),
                                  *slot_rows(key, after - between, s, prefix="solo_"),
                                  *worker_rows(key, burst), *worker_rows(key, solo, prefix="solo_")]
                    rows += point_rows
                    got = {r.metric: r.value for r in point_rows if r.tenant == ALL_TENANTS}
                    measured.append({"design": design, "load_point": lp, "burst_wall_s": round(burst.wall_s, 1),
                                     "solo_wall_s": round(solo.wall_s, 1), **got})
                    if progress:
                        progress(f"{tag}: quiet p99 {got['quiet_p99']:.0f} ms (solo {got['solo_quiet_p99']:.0f} ms,"
                                 f" x{got['quiet_p99_vs_solo']:.2f}), jain {got['jain_index']:.3f}, sent "
                                 f"{b.sent_rate:.1f}/s of {b.target_rate:.1f}/s, dropped {b.dropped}; slot hold "
                                 f"{got.get('slot_hold_ms', math.nan):.1f} ms, outside the slot "
                                 f"{got.get('outside_slot_ms', math.nan):.1f} ms (solo "
                                 f"{got.get('solo_outside_slot_ms', math.nan):.1f} ms)")
                        if plan.processes > 1:
                            progress(f"{tag} burst, {worker_line(burst)}")
                    history += burst.history + solo.history
                    states.append(read_state(svc.url, {**burst.api_keys, **solo.api_keys}))
                if design == plan.designs[0]:
                    probe = _probe(svc, label=f"probe-{settings.isolation}", processes=1, logs=logs,
                                   progress=progress)
                    history += probe.history
                    states.append(read_state(svc.url, probe.api_keys))
            except ProvisioningError as e:
                raise ServiceError(str(e)) from None
    results = _write_checked(live, history, states)
    if progress:
        progress(f"tenancy invariants: {_summary(results)}")
    parameters = {
        "designs": list(plan.designs),
        "load_points": list(plan.load_points),
        "seed": plan.seed,
        "quick": quick,
        "workload": {**{k: v for k, v in scenario.noisy_neighbour(0.0, **plan.burst).params.items()
                        if k != "load_point"}, "duration_s": plan.burst["duration_s"]},
        "solo_workload": {"duration_s": plan.solo["duration_s"], "burst": False},
        "tenants": [scenario.NOISY, *scenario.QUIET],
        "slots": scenario.SLOTS,
        "service_ms": scenario.SERVICE_MS,
        "bulkhead_per_tenant": scenario.BULKHEAD_PER_TENANT,
        "slo_ms": scenario.SLO_MS,
        "isolation": settings.isolation,
        "host": host or "started per design",
        **({"served": served} if served is not None else {}),
        "locust_processes": plan.processes,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "max_in_flight": DEFAULT_MAX_IN_FLIGHT,
        "fault": {"point": FAULT_POINT, "mode": "delay", "delay_ms": DELAY_MS},
        "measured": measured,
        "checks": {r.name: r.valid for r in results},
        "wall_s": round(time.monotonic() - started, 1),
    }
    csv_path = write_run(live, run_id=run_id, pattern=scenario.PATTERN, source="live", rows=rows,
                         parameters=parameters)
    if unsafe:
        run_probe(settings, out / "unsafe", isolation="leaky", host=None, progress=progress)
    return csv_path


