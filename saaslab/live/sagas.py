"""`saaslab load sagas`: checkouts under contention and worker crashes, per saga design, then the checker.

Per safe design (`orchestration`, `choreography`, `twopc`; `twopc` only on a server with
`max_prepared_transactions` > 0, as the embedded one is: elsewhere it is skipped with a one-line note in
the run's progress and in run.json's `parameters.skipped`), a service of its own (`WORKERS` uvicorn workers,
so a crash fault kills one and the supervisor restarts it while the other serves; lab mode on; a short lease,
recovery interval and visibility timeout, `FAST`, so a crashed worker's sagas are resumed within seconds)
takes Locust's `loadtests/sagas.py` `Checkout`: the simulation's workload (Zipf SKUs, stock that runs out,
declined cards) at `LIVE_LOAD_POINT` x `capacity_rps(SETUP)` offered checkouts per second, with crashes
mid-saga. Then the orders and the three participant databases are read back for the run's tenants
(reference_impl/sagas/readback.py) and the checker runs on them with the history
(reference_impl/sagas/invariants.py).

With `unsafe`, the `unsafe` design runs the same way into `<out>/unsafe/live/`: its checks are
expected to fail (`saaslab check sagas --out <out>/unsafe`).

Rows (source `live`, tenant "*"; the schema saaslab/reports/sagas/ reads, with the simulation's metric names):
`load_point` is the offered rate over the simulation's modelled capacity (scenarios/sagas/plan.py
`capacity_rps`), so a live cell sits beside the simulated one that offered the same checkouts per second.
`orders`; `completed_share`, `compensated_share`, `failed_share` (of the orders); `unfinished` (orders still
pending once the run settled); `latency_p50`, `latency_p99` (ms from the order's record to its saga's end, HDR
histogram); `throughput` (orders completed while the load ran, per second of it); `unknown_outcomes` (POSTs with
no final answer); `anomalies_per_10k` (violations of all-or-nothing, conservation, at-most-once and orphans, per
10,000 orders); `send_lag_p50`/`_p99`/`_max` (ms: how late Locust sent against its schedule). choreography: `events_per_saga` (stream entries written per order, duplicates included: what
its relays published). twopc: `lock_hold_p50`/`_p99` (ms from an attempt's start to its COMMIT PREPARED: as
long as its stock rows can stay locked) and `in_doubt_p50`/`_p99` (ms from PREPARE TRANSACTION to COMMIT
PREPARED), from the coordinator log (`twopc.timings`). The simulation's `messages_per_saga` counts every round
trip to a database, which the live service does not count, so it has no live row. run.json's
`parameters.failure_rate` is 0 (no participant failures are injected; declined cards are the workload's) and
`parameters.crash_rate` the crashes armed per second of load (mean over the designs).

Files: `results.csv`, `run.json`, `history.jsonl`, `state.json` ({design: the world read back}), `check.json`,
and the service and Locust logs. With `host`, the run drives that service (its design only) and reads the
databases of `SAASLAB_DATABASE_URL`: point it at the service's own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from loadtests.common.runconfig import LoadRun
from reference_impl.common.db import Pool
from reference_impl.common.redis_client import make_redis
from reference_impl.sagas.invariants import World, check_designs, world_to_json
from reference_impl.sagas.participants import Participants
from reference_impl.sagas.readback import read_world
from reference_impl.sagas.relay import events_stream
from reference_impl.sagas.twopc import timings
from saaslab import patterns
from saaslab.history import CheckResult, Op, save
from saaslab.live.harness import (
    CLIENT_TIMEOUT_S,
    Progress,
    run_locust,
    send_lag_rows,
    served_settings,
    service,
)
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios.kernel.metrics import RunKey
from scenarios.sagas.plan import LIVE_LOAD_POINT, SETUP, capacity_rps

PATTERN = "sagas"
LOCUSTFILE = "sagas"
USER_CLASS = "Checkout"
DESIGNS = tuple(d.name for d in patterns.get(PATTERN).designs if not d.unsafe)
UNSAFE = next(d.name for d in patterns.get(PATTERN).designs if d.unsafe)
TWOPC = "twopc"
WORKERS = 2
FAST = {"saga_lease_s": 2.0, "saga_recovery_interval_s": 0.5, "saga_retry_base_ms": 20.0, "saga_retry_cap_ms": 500.0,
        "saga_visibility_timeout_s": 2.0}
DEFAULT_DURATION_S = 10.0
QUICK_DURATION_S = 4.0
SEED = 1
QUICK_SETTLE_S = 20.0
UNSAFE_SETTLE_S = 5.0
ANOMALY_CHECKS = ("all_or_nothing", "stock_conserved", "money_conserved", "no_orphans", "at_most_once")
US = 1_000_000


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None, rate: float | None = None,
        duration: float | None = None, progress: Progress | None = None, unsafe: bool = False,
        processes: int = 1) -> Path:
    """Every safe design into `out/live/` (and `unsafe` into `out/unsafe/live/`); returns the results CSV."""
    token = settings.admin_token or secrets.token_urlsafe(24)
    if host is not None:
        settings, _ = served_settings(settings, host, token)
    rate = rate or LIVE_LOAD_POINT * capacity_rps(SETUP)
    duration = duration or (QUICK_DURATION_S if quick else DEFAULT_DURATION_S)
    skipped: dict[str, str] = {}
    if host is not None:
        designs: tuple[str, ...] = (settings.saga,)
    else:
        designs = DESIGNS
        if TWOPC in designs and (why := asyncio.run(_no_prepared_transactions(settings))):
            designs = tuple(d for d in designs if d != TWOPC)
            skipped[TWOPC] = why
            if progress:
                progress(f"saga={TWOPC} skipped: {why}")
    live = _Live(settings, token=token, host=host, rate=rate, duration=duration, quick=quick, progress=progress,
                 processes=processes)
    path = live.measure(out / "live", designs, skipped)
    if unsafe and host is None:
        live.measure(out / "unsafe" / "live", (UNSAFE,), {})
    return path


async def _no_prepared_transactions(settings: Settings) -> str | None:
    """Why the server cannot run twopc (one line naming the setting), or None when it can."""
    if not settings.database_url:
        raise ServiceError("no SAASLAB_DATABASE_URL to run the sagas against")
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        slots = int(await conn.fetchval("SHOW max_prepared_transactions"))
    finally:
        await conn.close()
    return None if slots > 0 else "the server's max_prepared_transactions is 0 (twopc needs it > 0)"


@dataclass
class _Live:
    settings: Settings
    token: str
    host: str | None
    rate: float
    duration: float
    quick: bool
    progress: Progress | None
    processes: int

    def measure(self, live: Path, designs: tuple[str, ...], skipped: dict[str, str]) -> Path:
        run_id = new_run_id(PATTERN, "live")
        load_point = round(self.rate / capacity_rps(SETUP), 4)
        rows: list[Row] = []
        history: list[Op] = []
        worlds: dict[str, World] = {}
        summaries: dict[str, Any] = {}
        for design in designs:
            locust, world, extra = self._one(live / "logs", design, load_point)
            worlds[design] = world
            history += locust.history
            key = RunKey(run_id=run_id, pattern=PATTERN, design=design, seed=SEED, load_point=load_point,
                         source="live")
            results = check_designs(locust.history, {design: world})
            mine = [*design_rows(key, world, locust.history, results, self.duration),
                    *(key.row(ALL_TENANTS, m, v, u) for m, v, u in extra), *send_lag_rows(key, locust.open_model())]
            rows += mine
            summaries[design] = [o["summary"]["counters"] for o in locust.outputs]
            if self.progress:
                got = {r.metric: r.value for r in mine}
                self.progress(f"saga={design}: {got['orders']:.0f} orders, {got['throughput']:.1f} completed/s, "
                              f"p99 {got['latency_p99']:.0f} ms, {got['compensated_share']:.0%} compensated, "
                              f"{sum(not r.valid for r in results)} checks violated")
        crashes = [sum(c["crashes_armed"] for c in counters) for counters in summaries.values()]
        results = check_designs(history, worlds)
        save(live / "history.jsonl", history)
        (live / "state.json").write_text(json.dumps({d: world_to_json(w) for d, w in worlds.items()}))
        (live / "check.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
        parameters = {"designs": list(designs), "skipped": skipped, "rate": self.rate, "load_point": load_point,
                      "capacity_rps": capacity_rps(SETUP), "duration_s": self.duration, "quick": self.quick,
                      "failure_rate": 0.0,
                      "crash_rate": sum(crashes) / len(crashes) / self.duration if crashes else 0.0, "workers": WORKERS, "service": FAST,
                      "host": self.host, "counters": summaries}
        return write_run(live, run_id=run_id, pattern=PATTERN, source="live", rows=rows, parameters=parameters)

    def _one(self, logs: Path, design: str, load_point: float) -> tuple[Any, World, list[tuple[str, float, str]]]:
        # Without recovery, the unsafe design's crashed sagas never end: waiting long for them measures nothing.
        settle_s = UNSAFE_SETTLE_S if design == UNSAFE else (QUICK_SETTLE_S if self.quick else None)
        workload = {"duration_s": self.duration, **({"settle_s": settle_s} if settle_s else {})}
        with service(self.settings, token=self.token, overrides={"saga": design, **FAST},
                     log_path=logs / f"service-{design}.log", host=self.host, workers=WORKERS, progress=self.progress,
                     describe=f"saga={design}, {WORKERS} workers") as svc:
            locust = run_locust(svc.url, LOCUSTFILE, USER_CLASS, token=self.token, processes=self.processes,
                                run=LoadRun(label=design, seed=SEED, design=design, rate=self.rate,
                                            load_point=load_point, workload=workload),
                                budget_s=self.duration + 4 * CLIENT_TIMEOUT_S + 40, logs=logs, progress=self.progress)
            world, extra = asyncio.run(_read_back(self.settings, design, sorted(locust.api_keys)))
        return locust, world, extra


async def _read_back(settings: Settings, design: str, tenants: list[str]) -> tuple[World, list[tuple[str, float, str]]]:
    """The world of `tenants`, and the design's own costs: stream events per order, 2PC's lock and doubt times."""
    if not settings.database_url:
        raise ServiceError("no SAASLAB_DATABASE_URL to read the sagas' databases back from")
    pool = Pool(settings.database_url, min_size=1, max_size=2)
    await pool.open()
    participants = await Participants.open(settings.database_url, pool_size=2)
    try:
        world = await read_world(pool, participants, tenants=tenants)
        ids = [o.id for o in world.orders]
        extra: list[tuple[str, float, str]] = []
        if design == "choreography":
            events = await _stream_events(settings, set(ids), min(o.started_us for o in world.orders) // 1000
                                          if world.orders else 0)
            extra.append(("events_per_saga", events / len(ids) if ids else float("nan"), "messages"))
        if design == TWOPC:
            extra += _twopc_rows(await timings(pool, ids))
        return world, extra
    finally:
        await participants.close()
        await pool.close()


async def _stream_events(settings: Settings, saga_ids: set[str], since_ms: int) -> int:
    """Entries of the events stream (written since `since_ms`) that belong to `saga_ids`."""
    redis = make_redis(settings)
    n, start = 0, f"{since_ms}-0"
    try:
        while True:
            batch = await redis.xrange(events_stream(settings.redis_prefix), min=start, count=1000)
            for _entry_id, fields in batch:
                event = json.loads(fields.get(b"event", fields.get("event", b"{}")))
                n += event.get("saga_id") in saga_ids
            if len(batch) < 1000:
                return n
            start = "(" + (batch[-1][0].decode() if isinstance(batch[-1][0], bytes) else batch[-1][0])
    finally:
        await redis.aclose()


def _twopc_rows(times: list[tuple[int, int]]) -> list[tuple[str, float, str]]:
    hold, doubt = LatencyHistogram(), LatencyHistogram()
    for held_us, doubt_us in times:
        hold.record_us(max(1, held_us))
        doubt.record_us(max(1, doubt_us))
    return [("lock_hold_p50", hold.percentile_ms(50.0), "ms"), ("lock_hold_p99", hold.percentile_ms(99.0), "ms"),
            ("in_doubt_p50", doubt.percentile_ms(50.0), "ms"), ("in_doubt_p99", doubt.percentile_ms(99.0), "ms")]


def design_rows(key: RunKey, world: World, history: list[Op], results: list[CheckResult], duration_s: float) -> list[Row]:
    """The run-level rows every design has (the module docstring names them)."""
    orders = world.orders
    n = len(orders)
    latency = LatencyHistogram()
    for o in orders:
        if o.finished_us is not None:
            latency.record_us(max(1, o.finished_us - o.started_us))
    began = min((o.started_us for o in orders), default=0)
    in_window = sum(1 for o in orders if o.status == "completed" and o.finished_us is not None
                    and o.finished_us - began <= duration_s * US)
    anomalies = sum(r.violations for r in results if r.name.split("[")[0] in ANOMALY_CHECKS)
    unknown = sum(1 for op in history if op.type == "info" and op.f == "checkout")
    share = (lambda status: sum(o.status == status for o in orders) / n if n else float("nan"))  # noqa: E731
    row = key.row
    return [
        row(ALL_TENANTS, "orders", n, "orders"),
        row(ALL_TENANTS, "completed_share", share("completed"), "ratio"),
        row(ALL_TENANTS, "compensated_share", share("compensated"), "ratio"),
        row(ALL_TENANTS, "failed_share", share("failed"), "ratio"),
        row(ALL_TENANTS, "unfinished", sum(o.finished_us is None for o in orders), "orders"),
        row(ALL_TENANTS, "latency_p50", latency.percentile_ms(50.0), "ms"),
        row(ALL_TENANTS, "latency_p99", latency.percentile_ms(99.0), "ms"),
        row(ALL_TENANTS, "throughput", in_window / duration_s, "orders/s"),
        row(ALL_TENANTS, "unknown_outcomes", unknown, "requests"),
        row(ALL_TENANTS, "anomalies_per_10k", 10_000 * anomalies / n if n else 0.0, "per_10k"),
    ]
