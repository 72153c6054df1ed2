"""`saaslab load idempotency`: double-click payments under timeouts, provider faults, worker crashes and a
retry storm, live, per design, every effect checked against the ledger.

Each design (`none`, `redis`, `postgres`) gets a service of its own: a uvicorn subprocess with
`WORKERS` workers of `SLOTS` scheduler slots, lab mode on and a lock timeout of `LOCK_TIMEOUT_S` (not
90 s: recoveries, and the completer's pass after the run, then happen within seconds). These, the load
points and the durations are `scenarios.idempotency.LIVE_PLAN`'s, which the simulation replays. uvicorn's supervisor (0.30 and later)
restarts a worker that a crash fault killed: it checks its workers twice a second, and the other
worker serves meanwhile. Against each service Locust runs `loadtests/idempotency.py`'s
`DoubleClickPay`, whose docstring describes the payments, the clients' retries and the fault
phases, which it arms itself.

The load point is the simulation's: offered logical payments per second over the service's
payment capacity. The simulation computes its capacity from its model; here it is measured once
per run, on the first design's service (`postgres`, the costliest) before anything is armed: the
closed-loop throughput of `CALIBRATION_CLIENTS` clients paying with fresh keys
(`measure_capacity`). Every design is then offered the same rate. On a machine shared with other
work the measurement moves with that work; run.json keeps it (`capacity_rps`).

The `postgres` completer runs beside each service as in production (`background.completer_for`, the
completer `saaslab completer` runs, a pass every `COMPLETER_INTERVAL_S`; with the other designs it finds nothing), so
it finishes claims abandoned by a crash or by clients that gave up while the run goes on; clients
that gave up come back only after it had its chance (`RECONCILE_AFTER_S`). When a design's runs are
over its service is stopped, so no request of the run still executes; once every lock has run out,
one more completer pass takes whatever is left and the ledger of the run's tenants is read back
(`ledger.read_state`), while the next design's service starts. `invariants.check` then judges each
design's history against its ledger.
Worker crashes are counted from the service's log (the crash fault's line), provider timeouts
from the 504 answers the clients got.

Everything lands in `<out>/live/` (`saaslab/live/idempotency_results.py` makes it): `results.csv` and
`run.json` (the rows `saaslab.reports.idempotency` reads: design, `load_point`, tenant "*", `duplicates_per_10k`, `orphans_per_10k`, `latency_p99`, the
simulation's other metrics where measured, and `crashes`, `provider_timeouts`, `capacity_rps`,
`unresolved`), `history.jsonl`, `state.json` (each design's charges and payments after the
completer, so `saaslab check idempotency` needs no connection) and `check.json` (each check per
design, named `<check>[<design>]`). `none`, the deliberately unsafe design, runs in the same harness
and must fail `exactly_one_effect`: `expected` tells `saaslab check` so, which then exits 1 only if a
safe design failed a check or `none` was not caught. With `unsafe`, `none`'s part is also written
alone to `<out>/unsafe/live/`, where `saaslab check` exits 1 on the violations, as for every pattern.
"""
from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from loadtests.common.provision import ProvisioningError, create_tenant
from loadtests.common.runconfig import LoadRun
from reference_impl.background import Completer, completer_for
from reference_impl.idempotency import completer
from reference_impl.idempotency.invariants import check
from reference_impl.idempotency.ledger import LedgerState, read_state
from saaslab.history import Op, save
from saaslab.live.harness import Progress, check_processes, run_locust, served_settings, service
from saaslab.live.idempotency_results import (
    PATTERN,
    UNSAFE,
    Cell,
    cell_line,
    cell_rows,
    check_designs,
    check_run,
    expected,
    merged,
    state_json,
    totals,
    verdicts_line,
    write_check,
)
from saaslab.results import ALL_TENANTS, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios import idempotency as scenario
from scenarios.kernel.metrics import RunKey

__all__ = ["check_run", "expected", "run"]  # `saaslab check idempotency` calls the first two from here
LOCUSTFILE = "idempotency"
USER_CLASS = "DoubleClickPay"
LIVE_SEED = 1
# The service, load points and durations are the live plan's, which the simulation replays (`aslive_*`).
WORKERS = scenario.LIVE_PLAN.workers
LOCK_TIMEOUT_S = scenario.LIVE_PLAN.lock_timeout_s
SLOTS = scenario.LIVE_PLAN.slots
"""Scheduler slots per worker of the services started here."""
RUN_ORDER = ("postgres", "redis", "none")
"""The capacity is measured on the first design's service: `postgres` does the most per payment."""
QUICK_LOAD_POINTS = scenario.LIVE_PLAN.quick_load_points
QUICK_DURATION_S = scenario.LIVE_PLAN.quick_duration_s
CALIBRATION_CLIENTS = 16
"""As many as the service has scheduler slots (2 workers x 8), and as the simulation (4 x 4)."""
CALIBRATION_S = {"quick": 1.5, "full": 3.0}
CALIBRATION_WARMUP_S = 0.3
DRAIN_S = 40.0
"""What a run may take past its schedule for payments still in their retries, and again for the reconcile
pass (the locustfile's `drain_s`)."""
COMPLETER_PASSES = 20
"""Batches at most per completer pass (each takes up to `completer.BATCH` claims)."""
COMPLETER_INTERVAL_S = scenario.LIVE_PLAN.completer_interval_s
"""Between the passes of the completer that runs beside each service (the simulation's `completer_interval_s`)."""
RECONCILE_AFTER_S = scenario.LIVE_PLAN.reconcile_after_s
"""When clients that gave up come back: the completer has had its chance at what they abandoned."""
CRASH_LINE = re.compile(r"lab-mode crash fault at '([^']+)'")


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass
class IdempotencyPlan:
    designs: tuple[str, ...]
    load_points: tuple[float, ...] | None
    """None: one load point, `rate` over the measured capacity."""
    duration_s: float
    rate: float | None = None
    capacity_rps: float | None = None
    """Measured on the first service unless given (a service at --host is measured too)."""
    quick: bool = False
    reconcile_after_s: float = RECONCILE_AFTER_S
    processes: int = 1
    """One Locust process drives the few hundred attempts/s these rates make and leaves the cores to the service;
    more (`--processes N`) share the schedule, worker 0 arming the faults."""
    seed: int = LIVE_SEED


def idempotency_plan(settings: Settings, *, quick: bool, host: str | None, rate: float | None,
                     duration: float | None, processes: int = 1) -> IdempotencyPlan:
    """Every design at the simulation's load points for its full duration; quick: `QUICK_LOAD_POINTS` for
    `QUICK_DURATION_S`. `rate` (logical payments/s) replaces the load points with one, measured against the
    capacity; `duration` the seconds of each run; with `host` the one design is the settings' (the service's own)."""
    designs = (settings.idempotency,) if host is not None else RUN_ORDER
    if rate is not None:
        load_points: tuple[float, ...] | None = None
    else:
        load_points = QUICK_LOAD_POINTS if quick else scenario.LIVE_PLAN.load_points
    default_s = QUICK_DURATION_S if quick else scenario.LIVE_PLAN.duration_s
    return IdempotencyPlan(designs, load_points, duration if duration is not None else default_s, rate, quick=quick,
                           processes=check_processes(processes))


# ---------------------------------------------------------------------------------------------
# The service's payment capacity


def measure_capacity(url: str, token: str, *, seconds: float, clients: int = CALIBRATION_CLIENTS) -> float:
    """Closed-loop payments per second of `clients` clients, each paying with a fresh key as soon as its last
    payment answered, over `seconds` after a short warm-up; on a tenant of its own, nothing armed."""
    tenant = create_tenant(url, token, f"capacity-{uuid.uuid4().hex[:8]}", plan="pro")
    headers = {"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"}
    _, body = scenario.payment_body(0)

    async def measure() -> float:
        done = 0
        counting = False
        stop_at = time.monotonic() + CALIBRATION_WARMUP_S + seconds
        async with httpx.AsyncClient(base_url=url, timeout=30.0,
                                     limits=httpx.Limits(max_connections=clients)) as client:
            async def one_client() -> None:
                nonlocal done
                while time.monotonic() < stop_at:
                    r = await client.post("/v1/payments", content=body,
                                          headers={**headers, "Idempotency-Key": f"cap-{uuid.uuid4().hex}"})
                    if r.status_code != 201:
                        raise ServiceError(f"measuring the payment capacity: POST /v1/payments answered "
                                           f"{r.status_code}: {r.text[:200]}")
                    if counting:
                        done += 1

            async def window() -> None:
                nonlocal counting
                await asyncio.sleep(CALIBRATION_WARMUP_S)
                counting = True
                await asyncio.sleep(seconds)
                counting = False

            await asyncio.gather(window(), *(one_client() for _ in range(clients)))
        return done / seconds

    try:
        capacity = asyncio.run(measure())
    except httpx.HTTPError as e:
        raise ServiceError(f"measuring the payment capacity at {url} failed: {e!r}") from None
    if capacity <= 0:
        raise ServiceError(f"the service at {url} completed no payment in {seconds:g}s")
    return capacity


# ---------------------------------------------------------------------------------------------
# After a design's runs: the completer, the ledger


_UNFINISHED = ("SELECT count(*) FROM idempotency_keys WHERE tenant_id = ANY($1::text[]) AND state <> 'finished'")


async def _settle(settings: Settings, cells: Sequence[Cell], not_before: float) -> int:
    """Past `not_before` (monotonic), complete every abandoned claim, then read each cell's ledger back.

    Returns how many claims the completer finished or rolled back (of any tenant: it takes what it finds).
    """
    async with completer_for(_database(settings), migrate=False) as c:
        await asyncio.sleep(max(0.0, not_before - time.monotonic()))
        for cell in cells:
            async with c.pool.connection() as conn:
                cell.abandoned = int(await conn.fetchval(_UNFINISHED, cell.tenant_ids))
        handled = await _complete(c)
        for cell in cells:
            cell.state = merged([await read_state(c.pool, t) for t in cell.tenant_ids])
        return handled


def _database(settings: Settings) -> Settings:
    if not settings.database_url:
        raise ServiceError("SAASLAB_DATABASE_URL is not set")
    return settings


async def _complete(c: Completer) -> int:
    """One pass of up to `COMPLETER_PASSES` batches, as `saaslab completer` makes them (a full batch is
    followed at once by the next)."""
    handled = 0
    for _ in range(COMPLETER_PASSES):
        done = await c.run_once()
        handled += done
        if done < completer.BATCH:
            break
    return handled


def _crashes(log_path: Path, offset: int) -> dict[str, int]:
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    return dict(Counter(m.group(1) for m in CRASH_LINE.finditer(text)))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Measured:
    cells: list[Cell]
    capacity_rps: float
    completer_handled: dict[str, int]


def _load_run(design: str, load_point: float, rate: float, capacity: float, plan: IdempotencyPlan) -> LoadRun:
    return LoadRun(label=f"{design}-lp{load_point:g}", design=design, load_point=load_point, rate=rate,
                   capacity_rps=capacity, seed=plan.seed,
                   workload={"duration_s": plan.duration_s, "drain_s": DRAIN_S,
                             "reconcile_after_s": plan.reconcile_after_s})


def _points(plan: IdempotencyPlan, capacity: float) -> list[tuple[float, float]]:
    """(load point, offered payments/s) of each run."""
    if plan.load_points is None:
        assert plan.rate is not None
        return [(round(plan.rate / capacity, 6), plan.rate)]
    return [(lp, lp * capacity) for lp in plan.load_points]


class _Completer(threading.Thread):
    """The completer as the service runs beside it (`saaslab completer --interval`): a pass every
    `COMPLETER_INTERVAL_S` while a design's service runs, counting what it finished or rolled back."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="idempotency-completer", daemon=True)
        self.settings = settings
        self.handled = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._passes())
        except BaseException as e:  # reported by `stop`
            self.error = e

    async def _passes(self) -> None:
        async with completer_for(_database(self.settings), migrate=False) as c:
            while not self._halt.is_set():
                self.handled += await _complete(c)
                until = time.monotonic() + COMPLETER_INTERVAL_S
                while not self._halt.is_set() and time.monotonic() < until:
                    await asyncio.sleep(0.05)

    def stop(self) -> int:
        """Stop after the pass under way; returns how many claims all passes handled."""
        self._halt.set()
        self.join()
        if self.error is not None:
            raise ServiceError(f"the completer beside the service failed: {self.error!r}") from self.error
        return self.handled


class _Settler(threading.Thread):
    """`_settle` in a thread of its own, so that the next design's service starts while this one's locks run out."""

    def __init__(self, settings: Settings, cells: Sequence[Cell], not_before: float) -> None:
        super().__init__(name="idempotency-settle", daemon=True)
        self.args = (settings, cells, not_before)
        self.handled = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.handled = asyncio.run(_settle(*self.args))
        except BaseException as e:  # re-raised in the caller's thread by `result`
            self.error = e

    def result(self) -> int:
        self.join()
        if self.error is not None:
            raise ServiceError(f"completing and reading back the ledger failed: {self.error!r}") from self.error
        return self.handled


def _measure(settings: Settings, plan: IdempotencyPlan, *, token: str, logs: Path, host: str | None,
             progress: Progress | None) -> Measured:
    cells: list[Cell] = []
    settlers: dict[str, _Settler] = {}
    capacity = plan.capacity_rps
    # A service at --host keeps its own lock timeout: the settings must say what it is.
    lock_timeout_s = LOCK_TIMEOUT_S if host is None else settings.idempotency_lock_timeout_s
    for design in plan.designs:
        overrides: dict[str, Any] = {"idempotency": design, "idempotency_lock_timeout_s": lock_timeout_s}
        if host is None:
            overrides["scheduler_slots"] = SLOTS
        log_path = logs / f"service-{design}.log"
        mine: list[Cell] = []
        with service(settings, token=token, overrides=overrides, workers=WORKERS, log_path=log_path, host=host,
                     progress=progress, describe=f"idempotency={design}, {WORKERS} workers, lock "
                                                 f"{lock_timeout_s:g} s") as svc:
            beside = _Completer(settings.model_copy(update=overrides))
            beside.start()
            try:
                if capacity is None:
                    capacity = measure_capacity(svc.url, token, seconds=CALIBRATION_S["quick" if plan.quick
                                                                                     else "full"])
                    if progress:
                        progress(f"payment capacity ({design}, {CALIBRATION_CLIENTS} clients closed-loop): "
                                 f"{capacity:.1f} payments/s")
                for lp, rate in _points(plan, capacity):
                    offset, completed = _size(log_path), beside.handled
                    run = run_locust(svc.url, LOCUSTFILE, USER_CLASS, token=token,
                                     run=_load_run(design, lp, rate, capacity, plan), processes=plan.processes,
                                     budget_s=plan.duration_s + 2 * DRAIN_S, logs=logs, progress=progress)
                    crashes = _crashes(log_path, offset) if svc.proc is not None else None
                    mine.append(Cell(design, lp, rate, run, crashes, completed_during=beside.handled - completed))
            except ProvisioningError as e:
                raise ServiceError(str(e)) from None
            finally:
                beside.stop()
        # The service is stopped, so no request of the run still executes: once every lock has run out,
        # the completer takes what is left and the ledger is read back.
        settlers[design] = _Settler(settings.model_copy(update=overrides), mine,
                                    time.monotonic() + lock_timeout_s + 0.1)
        settlers[design].start()
        cells += mine
    handled = {design: settler.result() for design, settler in settlers.items()}
    if progress:
        for c in cells:
            progress(cell_line(c))
    assert capacity is not None
    return Measured(cells, capacity, handled)


def _write(live: Path, cells: list[Cell], m: Measured, plan: IdempotencyPlan, *, host: str | None, started: float,
           progress: Progress | None, served: dict[str, Any] | None = None) -> Path:
    run_id = new_run_id(PATTERN, "live")
    history: list[Op] = []
    rows: list[Row] = []
    states: dict[str, list[LedgerState]] = defaultdict(list)
    tenants: dict[str, list[str]] = defaultdict(list)
    measured = []
    for c in cells:
        key = RunKey(run_id=run_id, pattern=PATTERN, design=c.design, seed=plan.seed, load_point=c.load_point,
                     source="live")
        results = check(c.run.history, c.state)
        cell_rows_ = cell_rows(key, c, results)
        rows += cell_rows_
        history += c.run.history
        states[c.design].append(c.state)
        tenants[c.design] += c.tenant_ids
        # Worker 0 arms the faults (loadtests/idempotency.py), so its summary holds them; every worker counts phases.
        summary = c.summaries()[0]
        phases: dict[str, Counter[str]] = defaultdict(Counter)
        for s in c.summaries():
            for phase, counts in s["counters"]["phases"].items():
                phases[phase].update(counts)
        got = {r.metric: r.value for r in cell_rows_ if r.tenant == ALL_TENANTS}
        measured.append({"design": c.design, "load_point": c.load_point, "rate": c.rate,
                         "wall_s": round(c.run.wall_s, 1), "crashes": c.crashes, "abandoned": c.abandoned,
                         "counters": dict(totals(c)),
                         "phases": {p: {k: v for k, v in n.items() if v} for p, n in phases.items()},
                         "faults": summary["faults"],
                         **{k: got[k] for k in ("duplicates_per_10k", "orphans_per_10k", "latency_p99",
                                                "provider_timeouts", "checks_valid")}})
    ledgers = {d: merged(s) for d, s in states.items()}
    save(live / "history.jsonl", history)
    (live / "state.json").write_text(json.dumps(state_json(ledgers, tenants)))
    results = check_designs(history, ledgers)
    write_check(live / "check.json", results)
    if progress:
        progress(f"idempotency invariants: {verdicts_line(results)}")
    designs = [d for d in (*scenario.DESIGNS, *plan.designs) if d in ledgers]
    designs = list(dict.fromkeys(designs))
    first = cells[0].summaries()[0] if cells else {}
    parameters = {
        "designs": designs,
        "load_points": sorted({c.load_point for c in cells}),
        "rate": [round(c.rate, 3) for c in cells if c.design == designs[0]] if designs else [],
        "capacity_rps": round(m.capacity_rps, 3),
        "capacity": {"clients": CALIBRATION_CLIENTS, "seconds": CALIBRATION_S["quick" if plan.quick else "full"],
                     "design": plan.designs[0], "measured": plan.capacity_rps is None},
        "duration_s": plan.duration_s,
        "seed": plan.seed,
        "quick": plan.quick,
        "workers": WORKERS,
        "slots": SLOTS if served is None else served.get("scheduler_slots"),
        "lock_timeout_s": LOCK_TIMEOUT_S if served is None else served.get("idempotency_lock_timeout_s"),
        "tenants": first.get("tenants"),
        "plan": first.get("plan"),
        "host": host or "started per design",
        **({"served": served} if served is not None else {}),
        "locust_processes": plan.processes,
        "completer_handled": {d: m.completer_handled.get(d) for d in designs},
        "measured": measured,
        "checks": {r.name: r.valid for r in results},
        "wall_s": round(time.monotonic() - started, 1),
    }
    return write_run(live, run_id=run_id, pattern=PATTERN, source="live", rows=rows, parameters=parameters)


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None,
        rate: float | None = None, duration: float | None = None, progress: Progress | None = None,
        unsafe: bool = False, processes: int = 1, seed: int = LIVE_SEED) -> Path:
    """Each design's double-click payments into `<out>/live/`; returns its results.csv.

    `rate` (logical payments/s) replaces the load points with one, `duration` the seconds of each run;
    `processes` Locust processes share each run's schedule;
    `unsafe` also writes the `none` design's part alone to `<out>/unsafe/live/` (running it there when
    the main run had no `none`, as with `--host`), where its checks are expected to fail.
    """
    started = time.monotonic()
    token = settings.admin_token or secrets.token_urlsafe(24)
    served: dict[str, Any] | None = None
    if host is not None:
        # The service's own design and lock timeout are measured, and recorded as it answered them.
        settings, served = served_settings(settings, host, token)
    plan = idempotency_plan(settings, quick=quick, host=host, rate=rate, duration=duration, processes=processes)
    plan.seed = seed
    live = out / "live"
    m = _measure(settings, plan, token=token, logs=live / "logs", host=host, progress=progress)
    csv_path = _write(live, m.cells, m, plan, host=host, started=started, progress=progress, served=served)
    if unsafe:
        unsafe_live = out / "unsafe" / "live"
        unsafe_plan = replace(plan, designs=(UNSAFE,), capacity_rps=m.capacity_rps)
        cells = [c for c in m.cells if c.design == UNSAFE]
        um = m
        if not cells:
            um = _measure(settings, unsafe_plan, token=token, logs=unsafe_live / "logs", host=None, progress=progress)
            cells = um.cells
        _write(unsafe_live, cells, um, unsafe_plan, host=None, started=started, progress=progress)
    return csv_path
