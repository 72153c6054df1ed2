"""`saaslab load sagas`: checkouts under contention and worker crashes, per saga design, then the checker.

Per design in `DESIGNS` (each with a service of its own: `WORKERS` uvicorn workers, so a crash fault
kills one and the supervisor restarts it while the other serves; lab mode on; a short lease and
recovery interval, `FAST`, so a crashed worker's sagas are resumed within seconds), Locust runs
`loadtests/sagas.py`'s `Checkout` (Zipf SKUs, stock that runs out, crashes mid-saga). Then the orders
and the three participant databases are read back (reference_impl/sagas/readback.py) for the run's
tenants and the checker runs on them with the history (reference_impl/sagas/invariants.py).

With `unsafe`, the `unsafe` design runs the same way into `<out>/unsafe/live/`: its checks are
expected to fail (`saaslab check sagas --out <out>/unsafe`).

Rows (source `live`, load point = offered checkouts/s): `orders`, `completed_per_s` (completed orders
over the run's duration), `completion_p50` / `completion_p99` (ms from the order's record to its
saga's end, HDR histogram), `share_compensated` (compensated or failed, of the terminal orders),
`pending_after` (orders still pending once the run settled), `unknown_outcomes` (POSTs with no final
answer), `anomalies_per_10k` (violations of all-or-nothing, conservation, at-most-once and orphans,
per 10,000 orders). Files: `results.csv`, `run.json`, `history.jsonl`, `state.json` ({design: the
world read back}), `check.json`, and the service and Locust logs.

With `host`, the run drives that service and reads the databases of `SAASLAB_DATABASE_URL`: point it
at the service's own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

from loadtests.common.runconfig import LoadRun
from reference_impl.common.db import Pool
from reference_impl.sagas.invariants import World, check_designs, world_to_json
from reference_impl.sagas.participants import Participants
from reference_impl.sagas.readback import read_world
from saaslab.history import CheckResult, Op, save
from saaslab.live.harness import CLIENT_TIMEOUT_S, Progress, run_locust, served_settings, service
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios.kernel.metrics import RunKey

PATTERN = "sagas"
LOCUSTFILE = "sagas"
USER_CLASS = "Checkout"
DESIGNS = ("orchestration",)
"""The safe designs measured; `twopc` and `choreography` join as they are built."""
UNSAFE = "unsafe"
WORKERS = 2
FAST = {"saga_lease_s": 2.0, "saga_recovery_interval_s": 0.5, "saga_retry_base_ms": 20.0, "saga_retry_cap_ms": 500.0}
DEFAULT_RATE = 20.0
DEFAULT_DURATION_S = 15.0
QUICK_DURATION_S = 6.0
SEED = 1
QUICK_SETTLE_S = 30.0
UNSAFE_SETTLE_S = 5.0
ANOMALY_CHECKS = ("all_or_nothing", "stock_conserved", "money_conserved", "no_orphans", "at_most_once")


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None, rate: float | None = None,
        duration: float | None = None, progress: Progress | None = None, unsafe: bool = False,
        processes: int = 1) -> Path:
    """Every safe design into `out/live/` (and `unsafe` into `out/unsafe/live/`); returns the results CSV."""
    token = settings.admin_token or secrets.token_urlsafe(24)
    if host is not None:
        settings, _ = served_settings(settings, host, token)
    rate = rate or DEFAULT_RATE
    duration = duration or (QUICK_DURATION_S if quick else DEFAULT_DURATION_S)
    designs = (settings.saga,) if host is not None else DESIGNS
    path = _measure(settings, out / "live", designs, token=token, host=host, rate=rate, duration=duration,
                    quick=quick, progress=progress, processes=processes)
    if unsafe and host is None:
        _measure(settings, out / "unsafe" / "live", (UNSAFE,), token=token, host=None, rate=rate, duration=duration,
                 quick=quick, progress=progress, processes=processes)
    return path


def _measure(settings: Settings, live: Path, designs: tuple[str, ...], *, token: str, host: str | None,
             rate: float, duration: float, quick: bool, progress: Progress | None, processes: int) -> Path:
    logs = live / "logs"
    run_id = new_run_id(PATTERN, "live")
    rows: list[Row] = []
    history: list[Op] = []
    worlds: dict[str, World] = {}
    summaries: dict[str, Any] = {}
    for design in designs:
        # Without recovery, the unsafe design's crashed sagas never end: waiting long for them measures nothing.
        settle_s = UNSAFE_SETTLE_S if design == UNSAFE else (QUICK_SETTLE_S if quick else None)
        workload = {"duration_s": duration, **({"settle_s": settle_s} if settle_s else {})}
        overrides = {"saga": design, **FAST}
        with service(settings, token=token, overrides=overrides, log_path=logs / f"service-{design}.log", host=host,
                     workers=WORKERS, progress=progress, describe=f"saga={design}, {WORKERS} workers") as svc:
            locust = run_locust(svc.url, LOCUSTFILE, USER_CLASS, token=token, processes=processes,
                                run=LoadRun(label=design, seed=SEED, design=design, rate=rate, workload=workload),
                                budget_s=duration + 4 * CLIENT_TIMEOUT_S + 40, logs=logs, progress=progress)
            tenants = sorted(locust.api_keys)
            world = asyncio.run(_read_back(settings, tenants))
        worlds[design] = world
        history += locust.history
        key = RunKey(run_id=run_id, pattern=PATTERN, design=design, seed=SEED, load_point=rate, source="live")
        results = check_designs(locust.history, {design: world})
        rows += design_rows(key, world, locust.history, results, duration)
        summaries[design] = [o["summary"]["counters"] for o in locust.outputs]
        if progress:
            got = {r.metric: r.value for r in rows if r.design == design}
            progress(f"saga={design}: {got['orders']:.0f} orders, {got['completed_per_s']:.1f} completed/s, "
                     f"p99 {got['completion_p99']:.0f} ms, {got['share_compensated']:.0%} compensated or failed, "
                     f"{sum(not r.valid for r in results)} checks violated")
    results = check_designs(history, worlds)
    save(live / "history.jsonl", history)
    (live / "state.json").write_text(json.dumps({d: world_to_json(w) for d, w in worlds.items()}))
    (live / "check.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    return write_run(live, run_id=run_id, pattern=PATTERN, source="live", rows=rows,
                     parameters={"designs": list(designs), "rate": rate, "duration_s": duration, "quick": quick,
                                 "workers": WORKERS, "service": FAST, "host": host, "counters": summaries})


async def _read_back(settings: Settings, tenants: list[str]) -> World:
    if not settings.database_url:
        raise ServiceError("no SAASLAB_DATABASE_URL to read the sagas' databases back from")
    pool = Pool(settings.database_url, min_size=1, max_size=2)
    await pool.open()
    participants = await Participants.open(settings.database_url, pool_size=2)
    try:
        return await read_world(pool, participants, tenants=tenants)
    finally:
        await participants.close()
        await pool.close()


def design_rows(key: RunKey, world: World, history: list[Op], results: list[CheckResult], duration_s: float) -> list[Row]:
    statuses = [o.status for o in world.orders]
    terminal = [o for o in world.orders if o.finished_us is not None]
    latency = LatencyHistogram()
    for o in terminal:
        latency.record_us(max(1, (o.finished_us or 0) - o.started_us))
    undone = sum(s in ("compensated", "failed") for s in statuses)
    anomalies = sum(r.violations for r in results if r.name.split("[")[0] in ANOMALY_CHECKS)
    unknown = sum(1 for op in history if op.type == "info" and op.f == "checkout")
    n = len(statuses)
    row = key.row
    return [
        row(ALL_TENANTS, "orders", n, "count"),
        row(ALL_TENANTS, "completed_per_s", statuses.count("completed") / duration_s, "1/s"),
        row(ALL_TENANTS, "completion_p50", latency.percentile_ms(50.0) if terminal else float("nan"), "ms"),
        row(ALL_TENANTS, "completion_p99", latency.percentile_ms(99.0) if terminal else float("nan"), "ms"),
        row(ALL_TENANTS, "share_compensated", undone / len(terminal) if terminal else float("nan"), "ratio"),
        row(ALL_TENANTS, "pending_after", statuses.count("pending"), "count"),
        row(ALL_TENANTS, "unknown_outcomes", unknown, "count"),
        row(ALL_TENANTS, "anomalies_per_10k", 10_000 * anomalies / n if n else 0.0, "per 10k orders"),
    ]
