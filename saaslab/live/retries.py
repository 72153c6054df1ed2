"""`saaslab load retries`: Brooker's contention experiment and the metastability map against the real service.

One service (lab mode on, FIFO scheduling with the simulation's `SLOTS` slots, so a read held by the
delay fault is the simulation's server), one Locust run of `loadtests/retries.py` (`RetriesLab`) over
the plan of `loadtests/retries_plan.py` (`QUICK` or `FULL`):

* contention: per policy, client count and seed, clients read one project and write it with
  `If-Match`, backing off on 412 by the very policy objects the simulation uses. Rows (the
  simulation's names, source "live", means over the seed's trials): `contention_calls`,
  `contention_completion_ms`, and what a comparison with the simulation needs: `contention_write_ms`
  and `contention_read_ms`, the mean round trip of a PATCH and a GET as the clients saw them.
* metastability: per client design, load and trigger length, the open system of the simulation,
  judged by the same code (`scenarios.retries.OpenRun`, `open_run_rows`): `meta_recovered_t<T>s`,
  `meta_collapsed_t<T>s`, the goodput share per second, attempts per request, and
  `meta_send_lag_p99_t<T>s` (ms), how late the generator sent against the schedule.

Everything lands in `<out>/live/`: `results.csv`, `run.json`, `history.jsonl` (every PATCH),
`state.json` (each contended project's final version and name) and `check.json`
(reference_impl/retries/invariants.py: every acknowledged write applied once, no update lost).
`unsafe` also runs a few blind writers (`If-Match: *`) into `<out>/unsafe/live/`, whose lost updates
the checker must catch.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loadtests.common.provision import ProvisioningError
from loadtests.common.runconfig import LoadRun
from loadtests.retries_plan import FULL, QUICK, UNSAFE, RetriesPlan, SpikePlan
from reference_impl.retries.invariants import check, check_run, write_check
from saaslab.history import CheckResult, Op, save
from saaslab.live.harness import (
    CLIENT_TIMEOUT_S,
    LocustRun,
    Progress,
    refuse_unmodelled,
    run_locust,
    served_settings,
    service,
)
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios import retries as scenario
from scenarios.kernel.metrics import RunKey

LOCUSTFILE = "retries"
USER_CLASS = "RetriesLab"
MODELLED = {"scheduler": "fifo", "scheduler_slots": scenario.SLOTS}
"""The service the map's simulation models: `SLOTS` request slots handed out first come, first served."""

__all__ = ["check_run", "contention_rows", "plan_for", "run", "spike_rows", "state_of"]


def plan_for(*, quick: bool, rate: float | None, duration: float | None) -> RetriesPlan:
    """The quick or full plan; `rate` (reads/s) makes the map a single load of that rate over capacity."""
    if duration is not None:
        raise ServiceError("retries runs fixed timelines (the simulation's); --duration does not apply to it")
    plan = QUICK if quick else FULL
    if rate is not None and plan.metastability is not None:
        load = round(rate / scenario.CAPACITY_RPS, 6)
        plan = plan.model_copy(update={"metastability": plan.metastability.model_copy(update={"loads": (load,)})})
    return plan


def contention_rows(run_id: str, trials: Iterable[dict[str, Any]]) -> list[Row]:
    """Means over each (policy, clients, seed)'s trials, as the simulation's rows (source live)."""
    grouped: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        grouped[(t["policy"], int(t["clients"]), int(t["seed"]))].append(t)
    rows = []
    for (policy, clients, seed), ts in sorted(grouped.items()):
        key = RunKey(run_id=run_id, pattern=scenario.PATTERN, design=policy, seed=seed, load_point=clients,
                     source="live")

        def mean(field: str, ts: list[dict[str, Any]] = ts) -> float:
            values = [float(t[field]) for t in ts]
            return sum(values) / len(values)

        rows += [key.row(ALL_TENANTS, "contention_calls", mean("calls"), "requests"),
                 key.row(ALL_TENANTS, "contention_completion_ms", mean("completion_ms"), "ms"),
                 key.row(ALL_TENANTS, "contention_write_ms", mean("write_ms"), "ms"),
                 key.row(ALL_TENANTS, "contention_read_ms", mean("read_ms"), "ms")]
    return rows


def open_run_of(cell: dict[str, Any]) -> scenario.OpenRun:
    return scenario.OpenRun(int(cell["trigger_s"]), list(cell["offered"]), list(cell["served"]),
                            list(cell["attempts"]), scenario.Timeline(**cell["timeline"]))


def spike_rows(run_id: str, cells: Iterable[dict[str, Any]]) -> list[Row]:
    """Each measured cell judged and written by the simulation's own code (`open_run_rows`)."""
    rows: list[Row] = []
    first: set[tuple[str, float]] = set()
    for cell in cells:
        key = RunKey(run_id=run_id, pattern=scenario.PATTERN, design=cell["design"], seed=int(cell["seed"]),
                     load_point=float(cell["load"]), source="live")
        baseline = (cell["design"], float(cell["load"]))
        rows += scenario.open_run_rows(key, open_run_of(cell), first=baseline not in first)
        first.add(baseline)
        lag = LatencyHistogram.decode(cell["send_lag"]).percentile_ms(99)
        rows.append(key.row(ALL_TENANTS, scenario.trigger_metric("meta_send_lag_p99", int(cell["trigger_s"])), lag,
                            "ms"))
    return rows


def state_of(trials: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What the checker reads back: each contended project's final version and name."""
    return {"projects": {t["project"]: {"version": t["final_version"], "name": t["final_name"]} for t in trials}}


def _outputs(run: LocustRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    summaries = [o["summary"] for o in run.outputs]
    return ([t for s in summaries for t in s.get("contention") or ()],
            [c for s in summaries for c in s.get("metastability") or ()])


def _write_checked(live: Path, history: list[Op], state: dict[str, Any]) -> list[CheckResult]:
    save(live / "history.jsonl", history)
    (live / "state.json").write_text(json.dumps(state))
    results = check(history, state)
    write_check(live / "check.json", results)
    return results


def _summary(results: list[CheckResult]) -> str:
    return ", ".join(f"{r.name} {'valid' if r.valid else 'VIOLATED'}" for r in results)


def _say_cells(progress: Progress | None, cells: list[dict[str, Any]]) -> None:
    if progress is None:
        return
    for c in cells:
        r = open_run_of(c)
        progress(f"map {c['design']} at load {c['load']:g}, {c['trigger_s']} s spike: {r.state()} (goodput "
                 f"{100 * r.goodput_after():.0f}% over the hold window, {r.amplification():.2f} attempts per request)")


def _say_contention(progress: Progress | None, trials: list[dict[str, Any]]) -> None:
    if progress is None:
        return
    by: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        by[(t["policy"], t["clients"])].append(t)
    for (policy, clients), ts in by.items():
        calls = sum(t["calls"] for t in ts) / len(ts)
        done = sum(t["completion_ms"] for t in ts) / len(ts)
        progress(f"contention {policy} with {clients} clients: {calls:.1f} calls, {done:.0f} ms to completion "
                 f"(mean of {len(ts)})")


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None,
        rate: float | None = None, duration: float | None = None, progress: Progress | None = None,
        unsafe: bool = False, processes: int = 1) -> Path:
    """Brooker's experiment and the metastability map, live (module docstring); returns the CSV.

    `rate` (reads/s) replaces the map's loads with that one; `processes` Locust processes drive it.
    """
    started = time.monotonic()
    plan = plan_for(quick=quick, rate=rate, duration=duration)
    token = settings.admin_token or secrets.token_urlsafe(24)
    served: dict[str, Any] | None = None
    if host is not None:
        settings, served = served_settings(settings, host, token)
        refuse_unmodelled(host, served, MODELLED)
    live = out / "live"
    logs = live / "logs"
    run_id = new_run_id(scenario.PATTERN, "live")
    with service(settings, token=token, overrides=MODELLED, log_path=logs / "service.log", host=host,
                 progress=progress, describe=f"scheduler=fifo, {scenario.SLOTS} slots") as svc:
        try:
            measured = run_locust(svc.url, LOCUSTFILE, USER_CLASS, token=token, processes=processes,
                                  run=LoadRun(label="retries", workload=plan.model_dump(mode="json")),
                                  budget_s=plan.budget_s(), logs=logs, progress=progress)
            blind = (run_locust(svc.url, LOCUSTFILE, USER_CLASS, token=token, processes=1,
                                run=LoadRun(label="retries-blind", workload=UNSAFE.model_dump(mode="json")),
                                budget_s=UNSAFE.budget_s(), logs=out / "unsafe" / "live" / "logs", progress=progress)
                     if unsafe else None)
        except ProvisioningError as e:
            raise ServiceError(str(e)) from None
    trials, cells = _outputs(measured)
    _say_contention(progress, trials)
    _say_cells(progress, cells)
    results = _write_checked(live, measured.history, state_of(trials))
    if progress:
        progress(f"retries invariants: {_summary(results)}")
    rows = contention_rows(run_id, trials) + spike_rows(run_id, cells)
    parameters = {
        "plan": plan.model_dump(mode="json"),
        "quick": quick,
        "slots": scenario.SLOTS,
        "scheduler": "fifo",
        "capacity_rps": scenario.CAPACITY_RPS,
        "timeout_ms": scenario.TIMEOUT_MS,
        "contention": _contention_parameters(plan),
        "metastability": _spike_parameters(plan.metastability),
        "host": host or "started for the run",
        **({"served": served} if served is not None else {}),
        "locust_processes": processes,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "wall_s": round(time.monotonic() - started, 1),
        "locust_wall_s": round(measured.wall_s, 1),
        "checks": {r.name: r.valid for r in results},
        "statuses": _statuses(trials),
    }
    csv_path = write_run(live, run_id=run_id, pattern=scenario.PATTERN, source="live", rows=rows,
                         parameters=parameters)
    if blind is not None:
        blind_trials, _ = _outputs(blind)
        unsafe_live = out / "unsafe" / "live"
        verdicts = _write_checked(unsafe_live, blind.history, state_of(blind_trials))
        write_run(unsafe_live, run_id=new_run_id(scenario.PATTERN, "live"), pattern=scenario.PATTERN, source="live",
                  rows=contention_rows(run_id, blind_trials), parameters={"plan": UNSAFE.model_dump(mode="json"),
                                                                          "designs": ["blind_write"]})
        if progress:
            progress(f"blind writers (If-Match: *), expected to fail: {_summary(verdicts)}")
    return csv_path


def _statuses(trials: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for t in trials:
        for status, n in t["statuses"].items():
            total[status] += n
    return dict(total)


def _contention_parameters(plan: RetriesPlan) -> dict[str, Any]:
    c = plan.contention
    if c is None:
        return {}
    return {"policies": list(c.policies), "clients": list(c.clients), "seeds": list(c.seeds),
            "trials_per_seed": c.trials, "parallel_seeds": c.parallel_seeds,
            "base_ms": scenario.DEFAULT_BASE_US / 1000, "cap_ms": scenario.DEFAULT_CAP_US / 1000,
            "sim_write_ms": 2 * scenario.NET_MEAN_US / 1000}


def _spike_parameters(m: SpikePlan | None) -> dict[str, Any]:
    if m is None:
        return {}
    return {"designs": list(m.designs), "loads": list(m.loads), "triggers_s": list(m.triggers_s), **m.timeline,
            "seed": m.seed, "base_delay_ms": m.base_delay_ms, "spike_delay_ms": m.spike_delay_ms,
            "slots": scenario.SLOTS, "capacity_rps": scenario.CAPACITY_RPS, "timeout_ms": scenario.TIMEOUT_MS,
            "recovered_share": scenario.RECOVERED_SHARE, "collapsed_share": scenario.COLLAPSED_SHARE,
            "client_hosts": scenario.CLIENT_HOSTS, "max_attempts": scenario.META_MAX_ATTEMPTS,
            "spike_factor": scenario.SPIKE_FACTOR}
