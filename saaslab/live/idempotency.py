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

The `postgres` completer runs beside each service as in production (`completer.run_once`, what
`saaslab completer` runs, every `COMPLETER_INTERVAL_S`; with the other designs it finds nothing), so
it finishes claims abandoned by a crash or by clients that gave up while the run goes on; clients
that gave up come back only after it had its chance (`RECONCILE_AFTER_S`). When a design's runs are
over its service is stopped, so no request of the run still executes; once every lock has run out,
one more completer pass takes whatever is left and the ledger of the run's tenants is read back
(`ledger.read_state`), while the next design's service starts. `invariants.check` then judges each
design's history against its ledger.
Worker crashes are counted from the service's log (the crash fault's line), provider timeouts
from the 504 answers the clients got.

Everything lands in `<out>/live/`: `results.csv` and `run.json` (the rows `saaslab.reports.idempotency`
reads: design, `load_point`, tenant "*", `duplicates_per_10k`, `orphans_per_10k`, `latency_p99`, the
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
import math
import re
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.common.provision import ProvisioningError, create_tenants
from reference_impl.common.db import Pool
from reference_impl.common.faults import Faults
from reference_impl.common.metrics import Metrics
from reference_impl.idempotency import completer
from reference_impl.idempotency.http import policy_of, wall_clock_us
from reference_impl.idempotency.invariants import SUCCEEDED, check
from reference_impl.idempotency.ledger import LedgerState, Payment, read_state
from reference_impl.idempotency.provider import Charge
from reference_impl.tenancy.repository import make_store, publisher
from saaslab.history import CheckResult, Op, load, save
from saaslab.live.harness import LocustRun, Progress, run_locust, service
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios import idempotency as scenario
from scenarios.kernel.metrics import RunKey
from scenarios.kernel.workload import TenantSpec

PATTERN = scenario.PATTERN
LOCUSTFILE = "idempotency"
USER_CLASS = "DoubleClickPay"
LIVE_SEED = 1
# The service, load points and durations are the live plan's, which the simulation replays (`aslive_*`).
WORKERS = scenario.LIVE_PLAN.workers
LOCK_TIMEOUT_S = scenario.LIVE_PLAN.lock_timeout_s
SLOTS = scenario.LIVE_PLAN.slots
"""Scheduler slots per worker of the services started here."""
UNSAFE = "none"
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
PER_10K = scenario.PER_10K


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
    """One Locust process drives the few hundred attempts/s these rates make and leaves the cores to the service."""
    seed: int = LIVE_SEED


def idempotency_plan(settings: Settings, *, quick: bool, host: str | None, rate: float | None,
                     duration: float | None) -> IdempotencyPlan:
    """Every design at the simulation's load points for its full duration; quick: `QUICK_LOAD_POINTS` for
    `QUICK_DURATION_S`. `rate` (logical payments/s) replaces the load points with one, measured against the
    capacity; `duration` the seconds of each run; with `host` the one design is the settings' (the service's own)."""
    designs = (settings.idempotency,) if host is not None else RUN_ORDER
    if rate is not None:
        load_points: tuple[float, ...] | None = None
    else:
        load_points = QUICK_LOAD_POINTS if quick else scenario.LIVE_PLAN.load_points
    default_s = QUICK_DURATION_S if quick else scenario.LIVE_PLAN.duration_s
    return IdempotencyPlan(designs, load_points, duration if duration is not None else default_s, rate, quick=quick)


# ---------------------------------------------------------------------------------------------
# The service's payment capacity


def measure_capacity(url: str, token: str, *, seconds: float, clients: int = CALIBRATION_CLIENTS) -> float:
    """Closed-loop payments per second of `clients` clients, each paying with a fresh key as soon as its last
    payment answered, over `seconds` after a short warm-up; on a tenant of its own, nothing armed."""
    tenant = create_tenants(url, token, [TenantSpec("capacity")])["capacity"]
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


@dataclass
class Cell:
    """One Locust run: one design at one load point."""

    design: str
    load_point: float
    rate: float
    run: LocustRun
    crashes: dict[str, int] | None
    """Worker crashes by fault point, from the service log (None: a service at --host, whose log is not ours)."""
    state: LedgerState = field(default_factory=lambda: LedgerState((), ()))
    abandoned: int = 0
    """Claims of the run still unfinished when the last completer pass came (its tenants' keys)."""
    completed_during: int = 0
    """Claims the completer beside the service finished or rolled back during the run."""

    @property
    def tenant_ids(self) -> list[str]:
        return sorted(self.run.api_keys)

    def summaries(self) -> list[dict[str, Any]]:
        return [o["summary"] for o in self.run.outputs]


_UNFINISHED = ("SELECT count(*) FROM idempotency_keys WHERE tenant_id = ANY($1::text[]) AND state <> 'finished'")


async def _settle(settings: Settings, cells: Sequence[Cell], not_before: float) -> int:
    """Past `not_before` (monotonic), complete every abandoned claim, then read each cell's ledger back.

    Returns how many claims the completer finished or rolled back (of any tenant: it takes what it finds).
    """
    async with _completer_pool(settings) as (pool, complete):
        await asyncio.sleep(max(0.0, not_before - time.monotonic()))
        for cell in cells:
            async with pool.connection() as conn:
                cell.abandoned = int(await conn.fetchval(_UNFINISHED, cell.tenant_ids))
        handled = await complete()
        for cell in cells:
            cell.state = merged([await read_state(pool, t) for t in cell.tenant_ids])
        return handled


@asynccontextmanager
async def _completer_pool(settings: Settings) -> AsyncIterator[tuple[Pool, Callable[[], Awaitable[int]]]]:
    """A small pool on the run's database, and one completer pass over it (up to `COMPLETER_PASSES` batches)
    exactly as `saaslab completer` runs it: publishing to the payments of the isolation design's store."""
    if not settings.database_url:
        raise ServiceError("SAASLAB_DATABASE_URL is not set")
    pool = Pool(settings.database_url, min_size=1, max_size=2)
    await pool.open()
    publish = publisher(make_store(settings.isolation, pool, Faults({}, Metrics())))
    policy = policy_of(settings)

    async def complete() -> int:
        handled = 0
        for _ in range(COMPLETER_PASSES):
            done = await completer.run_once(pool, wall_clock_us(), policy=policy, publish=publish)
            handled += done
            if done < completer.BATCH:
                break
        return handled

    try:
        yield pool, complete
    finally:
        await pool.close()


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


def _env(design: str, load_point: float, rate: float, capacity: float, plan: IdempotencyPlan) -> dict[str, str]:
    return {"SAASLAB_LOAD_DESIGN": design, "SAASLAB_LOAD_POINT": repr(load_point), "SAASLAB_LOAD_RATE": repr(rate),
            "SAASLAB_CAPACITY_RPS": repr(capacity), "SAASLAB_SEED": str(plan.seed),
            "SAASLAB_LOAD_WORKLOAD": json.dumps({"duration_s": plan.duration_s, "drain_s": DRAIN_S,
                                                 "reconcile_after_s": plan.reconcile_after_s})}


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
        async with _completer_pool(self.settings) as (pool, complete):
            while not self._halt.is_set():
                self.handled += await complete()
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
        with service(settings, token=token, env=overrides, workers=WORKERS, log_path=log_path, host=host,
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
                    run = run_locust(svc.url, LOCUSTFILE, USER_CLASS, label=f"{design}-lp{lp:g}", token=token,
                                     env=_env(design, lp, rate, capacity, plan), processes=plan.processes,
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
            progress(_cell_line(c))
    assert capacity is not None
    return Measured(cells, capacity, handled)


# ---------------------------------------------------------------------------------------------
# Rows and checks


def _total(cell: Cell) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in cell.summaries():
        out.update(s["counters"]["total"])
    return out


def _latency(cell: Cell) -> LatencyHistogram:
    h = LatencyHistogram()
    for s in cell.summaries():
        h.add(LatencyHistogram.decode(s["counters"]["latency"]))
    return h


def extra_effects(state: LedgerState) -> int:
    """Per key, the larger of (succeeded charges - 1) and (payment rows - 1), when positive, summed (as the
    simulation counts duplicates)."""
    charges = Counter((c.tenant_id, c.reference) for c in state.charges if c.status == SUCCEEDED)
    payments = Counter((p.tenant_id, p.idempotency_key) for p in state.payments)
    return sum(max(0, charges[k] - 1, payments[k] - 1) for k in set(charges) | set(payments))


def provider_timeouts(history: Iterable[Op]) -> int:
    """Attempts answered 504 because the provider's answer was lost (it charged, then timed out)."""
    n = 0
    for op in history:
        if op.type != "invoke" and op.value.get("status") == 504:
            try:
                n += json.loads(op.value["body"].encode("latin-1")).get("type", "").endswith("/provider-timeout")
            except (KeyError, ValueError, AttributeError):
                pass
    return n


def cell_rows(key: RunKey, cell: Cell, results: Sequence[CheckResult]) -> list[Row]:
    """The report's rows for one run (module docstring; the simulation's names where it measures the same)."""
    t, om, lat = _total(cell), cell.run.open_model(), _latency(cell)
    payments, attempts = t["payments"], t["attempts"]
    verdict = {r.name: r for r in results}

    def per_10k(n: float) -> float:
        return PER_10K * n / payments if payments else math.nan

    def pct(n: float, of: float) -> float:
        return 100.0 * n / of if of else math.nan

    payment_latency = LatencyHistogram()
    for c in om.tenants.values():
        payment_latency.add(c.latency)
    values: list[tuple[str, float, str]] = [
        ("payments", payments, "requests"),
        ("attempts", attempts, "requests"),
        ("duplicates_per_10k", per_10k(extra_effects(cell.state)), "per_10k"),
        ("effect_violations_per_10k", per_10k(verdict["exactly_one_effect"].violations), "per_10k"),
        ("orphans_per_10k", per_10k(verdict["no_orphan_charges"].violations), "per_10k"),
        ("replay_mismatch", verdict["replays_match_first"].violations, "requests"),
        ("conflicts_pct", pct(t["conflicts"], attempts), "percent"),
        ("replays_pct", pct(t["replays"], attempts), "percent"),
        ("timeouts_pct", pct(t["timeouts"], attempts), "percent"),
        ("retries_per_request", (attempts - t["chains"]) / payments if payments else math.nan, "ratio"),
        ("gave_up_pct", pct(t["gave_up"], payments), "percent"),
        ("unresolved", t["gave_up"] - t["reconciled"], "requests"),
        ("latency_p50", lat.percentile_ms(50), "ms"),
        ("latency_p99", lat.percentile_ms(99), "ms"),
        ("payment_latency_p99", payment_latency.percentile_ms(99), "ms"),
        ("completed_by_completer_per_10k", per_10k(cell.completed_during + cell.abandoned), "per_10k"),
        ("provider_timeouts", provider_timeouts(cell.run.history), "count"),
        ("errors", t["dropped_connections"] + t["server_errors"], "requests"),
        ("timeouts", t["timeouts"], "requests"),
        ("dropped", om.dropped, "requests"),
        ("budget_refused", t["budget_refused"], "requests"),
        ("capacity_rps", _summary_value(cell, "capacity_rps"), "rps"),
        ("target_rate", om.target_rate, "rps"),
        ("sent_rate", om.sent_rate, "rps"),
        ("send_lag_p99", om.send_lag.percentile_ms(99), "ms"),
        *((r.name, float(r.valid), "bool") for r in results),
        ("checks_valid", float(all(r.valid for r in results)), "bool"),
    ]
    if cell.crashes is not None:
        values.append(("crashes", sum(cell.crashes.values()), "count"))
    return [key.row(ALL_TENANTS, metric, value, unit) for metric, value, unit in values]


def _summary_value(cell: Cell, name: str) -> float:
    found = [s[name] for s in cell.summaries() if name in s]
    return float(found[0]) if found else math.nan


def named(results: Iterable[CheckResult], design: str) -> list[CheckResult]:
    """The verdicts as check.json names them: `<check>[<design>]`."""
    return [CheckResult(f"{r.name}[{design}]", r.valid, r.checked, r.violations, r.examples, r.detail)
            for r in results]


def merged(states: Iterable[LedgerState]) -> LedgerState:
    states = list(states)
    return LedgerState(tuple(c for s in states for c in s.charges), tuple(p for s in states for p in s.payments))


def check_designs(history: Sequence[Op], states: dict[str, LedgerState]) -> list[CheckResult]:
    """`invariants.check` per design on its attempts (each op carries its design) and its ledger."""
    results: list[CheckResult] = []
    for design, state in states.items():
        ops = [op for op in history if op.value.get("design") == design]
        results += named(check(ops, state), design)
    return results


def expected(result: CheckResult, results: Sequence[CheckResult]) -> bool:
    """Whether a verdict is what the lab expects of a run that mixes safe designs with the unsafe one: every
    check holds on a safe design, and the unsafe design is caught by `exactly_one_effect` (its other checks may
    go either way); `saaslab check` exits 1 otherwise. A run of the unsafe design alone (`<out>/unsafe`) is
    judged as every pattern's is: caught means violated, and `saaslab check` exits 1."""
    if all(r.name.endswith(f"[{UNSAFE}]") for r in results):
        return result.valid
    if result.name.endswith(f"[{UNSAFE}]"):
        return not result.valid if result.name.startswith("exactly_one_effect[") else True
    return result.valid


# ---------------------------------------------------------------------------------------------
# state.json: each design's ledger after the completer, for `saaslab check idempotency`


def _state_json(states: dict[str, LedgerState], tenants: dict[str, list[str]]) -> dict[str, Any]:
    def payment(p: Payment) -> dict[str, Any]:
        return {**asdict(p), "id": str(p.id), "created_at": p.created_at.isoformat()}

    return {d: {"tenants": tenants[d], "charges": [asdict(c) for c in s.charges],
                "payments": [payment(p) for p in s.payments]} for d, s in states.items()}


def _states_from_json(data: dict[str, Any]) -> dict[str, LedgerState]:
    def payment(p: dict[str, Any]) -> Payment:
        return Payment(**{**p, "id": uuid.UUID(p["id"]), "created_at": datetime.fromisoformat(p["created_at"])})

    return {d: LedgerState(tuple(Charge(**c) for c in s["charges"]), tuple(payment(p) for p in s["payments"]))
            for d, s in data.items()}


def write_check(path: Path, results: list[CheckResult]) -> None:
    """`check.json`: the list of verdicts (the form the report and the notebook read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2))


def check_run(out_dir: Path, settings: Settings | None = None) -> list[CheckResult]:
    """Check a live run folder again: `out_dir/live/history.jsonl` against `state.json`, the ledger the run read
    back after the completer (so no connection is needed). Writes `out_dir/live/check.json`."""
    live = out_dir / "live"
    state_path = live / "state.json"
    if not state_path.is_file():
        raise ServiceError(f"no state.json in {live}; run `saaslab load {PATTERN}` first")
    results = check_designs(load(live / "history.jsonl"), _states_from_json(json.loads(state_path.read_text())))
    write_check(live / "check.json", results)
    return results


# ---------------------------------------------------------------------------------------------
# Writing a run


def _cell_line(c: Cell) -> str:
    t = _total(c)
    dup = PER_10K * extra_effects(c.state) / t["payments"] if t["payments"] else math.nan
    crashes = "?" if c.crashes is None else str(sum(c.crashes.values()))
    return (f"{c.design}-lp{c.load_point:g}: {t['payments']} payments at {c.rate:.1f}/s, {t['attempts']} attempts "
            f"({t['conflicts']} 409, {t['replays']} replays, {t['timeouts']} client timeouts, "
            f"{provider_timeouts(c.run.history)} provider timeouts, {t['gave_up']} gave up, {t['reconciled']} of "
            f"them reconciled); {crashes} worker crashes; the completer finished {c.completed_during} claims "
            f"during the run and {c.abandoned} after it; duplicates {dup:.0f} per 10k; p99 "
            f"{_latency(c).percentile_ms(99):.1f} ms")


def _summary(results: Sequence[CheckResult]) -> str:
    """Verdicts by design, without the names' brackets (a progress line may be printed as rich markup)."""
    by_design: dict[str, list[str]] = defaultdict(list)
    for r in results:
        check_name, _, design = r.name.rstrip("]").partition("[")
        by_design[design].append(f"{check_name} {'valid' if r.valid else 'VIOLATED'}")
    return "; ".join(f"{d}: {', '.join(v)}" for d, v in by_design.items())


def _write(live: Path, cells: list[Cell], m: Measured, plan: IdempotencyPlan, *, host: str | None, started: float,
           progress: Progress | None) -> Path:
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
        summary = c.summaries()[0]
        got = {r.metric: r.value for r in cell_rows_}
        measured.append({"design": c.design, "load_point": c.load_point, "rate": c.rate,
                         "wall_s": round(c.run.wall_s, 1), "crashes": c.crashes, "abandoned": c.abandoned,
                         "counters": dict(_total(c)),
                         "phases": {p: {k: v for k, v in n.items() if v}
                                    for p, n in summary["counters"]["phases"].items()},
                         "faults": summary["faults"],
                         **{k: got[k] for k in ("duplicates_per_10k", "orphans_per_10k", "latency_p99",
                                                "provider_timeouts", "checks_valid")}})
    ledgers = {d: merged(s) for d, s in states.items()}
    save(live / "history.jsonl", history)
    (live / "state.json").write_text(json.dumps(_state_json(ledgers, tenants)))
    results = check_designs(history, ledgers)
    write_check(live / "check.json", results)
    if progress:
        progress(f"idempotency invariants: {_summary(results)}")
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
        "slots": SLOTS if host is None else None,
        "lock_timeout_s": LOCK_TIMEOUT_S,
        "tenants": first.get("tenants"),
        "plan": first.get("plan"),
        "host": host or "started per design",
        "locust_processes": plan.processes,
        "completer_handled": {d: m.completer_handled.get(d) for d in designs},
        "measured": measured,
        "checks": {r.name: r.valid for r in results},
        "wall_s": round(time.monotonic() - started, 1),
    }
    return write_run(live, run_id=run_id, pattern=PATTERN, source="live", rows=rows, parameters=parameters)


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None,
        rate: float | None = None, duration: float | None = None, progress: Progress | None = None,
        unsafe: bool = False, seed: int = LIVE_SEED) -> Path:
    """Each design's double-click payments into `<out>/live/`; returns its results.csv.

    `rate` (logical payments/s) replaces the load points with one, `duration` the seconds of each run;
    `unsafe` also writes the `none` design's part alone to `<out>/unsafe/live/` (running it there when
    the main run had no `none`, as with `--host`), where its checks are expected to fail.
    """
    started = time.monotonic()
    token = settings.admin_token or secrets.token_urlsafe(24)
    plan = idempotency_plan(settings, quick=quick, host=host, rate=rate, duration=duration)
    plan.seed = seed
    live = out / "live"
    m = _measure(settings, plan, token=token, logs=live / "logs", host=host, progress=progress)
    csv_path = _write(live, m.cells, m, plan, host=host, started=started, progress=progress)
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
