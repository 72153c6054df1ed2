"""`saaslab load failover`: writes through the service while the nemesis strikes its PostgreSQL primary.

Per cell (a design and a fault): a cluster of its own (reference_impl/failover/drill.py `Rig`: the primary
and `SAASLAB_FAILOVER_REPLICAS` replicas, in network namespaces when the machine allows, the lease in the
lab's Redis, the failover manager's agents), then the reference service pointed at it
(`SAASLAB_FAILOVER_MEMBERS`, `SAASLAB_FAILOVER_LEASE_KEY`, lab mode), then Locust's `loadtests/failover.py`
`Writes` at `rate` writes per second for `duration` seconds. `WARMUP_S` after the first write reaches the
primary, the nemesis strikes it: `kill` (SIGKILL), `pause` (SIGSTOP, SIGCONT after `hold_s`) or `partition`
(its host cut off from everyone, healed after `hold_s`); with `LAG_S` the replicas' WAL receivers are held
for that long first (the lag nemesis). The service is never restarted. Once the load ends, the old
primary has rejoined (by itself, or for the unsafe design by the operator), the survivors are read back
from the surviving primary and the checker runs (reference_impl/failover/invariants.py).

`quick` runs one cell, `sync` with `kill` (about 30 s in all); otherwise the safe designs against every
fault (`partition` skipped, with its reason in `parameters.skipped`, where namespaces cannot be made).
`unsafe` adds the unsafe design cut off (partition, else pause) into `<out>/unsafe/live/`. Its damage needs a
client that still reaches the old primary while it takes writes: one service on the majority's side, whose
pool stays with the new primary once it found it, may see none, and then the checks pass; the drills'
minority-side writer is what catches the design (tests/integration/test_failover_drills.py). `host` is refused: the run must start, and strike, the cluster the service
writes to (run the locustfile itself against a running service, as its docstring says).

Rows (source `live`, tenant "*", the schema saaslab/reports/failover/ reads): every metric carries its
condition as the simulation's do, `<metric>@<fault>[<hold>s]/<timers>[/lag<ms>ms]` (`writes_lost@kill/lab`,
`unavailability@pause5s/lab`): `invariants.rows` (`writes_total`, `writes_acknowledged`, `writes_survivors`,
`writes_lost`, `writes_unacknowledged_present`, `lost_fraction`, `split_brain_writes`, `longest_ack_gap`,
`stale_reads`, `unavailability`), `failover_s` (fault to promotion), and what clients saw: `responses_503`
(answers during the switch), `errors` (answers that were neither a success, a probe's 404 nor a 503 with
Retry-After: a 500 would land here), `timeouts` (no answer), `write_latency_p50`/`_p99` (ms, acknowledged
writes), `throughput` (acknowledged writes per second of load), `recovered` (1 when a write sent after the
fault was acknowledged: the service came back without a restart), `send_lag_*` (ms).

Files: `results.csv`, `run.json`, `history.jsonl` (every cell's, ops tagged with their cell), `state.json` (per
cell: the survivors read back and when the fault struck; `check_run` checks again from these), `check.json`
(the checks per cell, named `<check>[<design>@<fault>]`), `drills.json` (per cell: the Jepsen line, the
manager's events, the answers' statuses, `GET /admin/topology` before and after the load), and the service and Locust logs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from loadtests.common.runconfig import LoadRun
from reference_impl.failover import core, invariants, network
from reference_impl.failover.drill import FAULTS, Rig, condition, named_timers, result_rows
from reference_impl.failover.pgcluster import TABLE
from reference_impl.failover.redis_cluster import SentinelTimers
from reference_impl.failover.redis_drill import redis_drill as run_redis_drill
from saaslab import patterns
from saaslab.history import CheckResult, Op, load, save
from saaslab.live.harness import (
    CLIENT_TIMEOUT_S,
    LocustRun,
    Progress,
    check_processes,
    run_locust,
    send_lag_rows,
    service,
)
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios.kernel.metrics import RunKey

PATTERN = "failover"
LOCUSTFILE = "failover"
USER_CLASS = "Writes"
SAFE = tuple(d.name for d in patterns.get(PATTERN).axes[0].designs if not d.unsafe)
UNSAFE = next(d.name for d in patterns.get(PATTERN).axes[0].designs if d.unsafe)
QUICK_CELLS = (("sync", "kill"),)
SEED = 1
RATE = 100.0
DEFAULT_DURATION_S = 15.0
QUICK_DURATION_S = 10.0
WARMUP_S = 2.5
LAG_S = 0.0
START_TIMEOUT_S = 60.0
US = 1_000_000

def redis_drill(settings: Settings, out: Path, progress: Progress | None) -> Path:
    """One Redis drill after the PostgreSQL cells (the design `SAASLAB_FAILOVER_REDIS` names, its master cut off,
    or killed where network namespaces are unavailable), in the Jepsen format, into `out/` (results.csv,
    drills.json): what `make demo` shows of the Redis half; `saaslab failover drill --component redis --all`
    runs the whole matrix."""
    fault = "kill" if network.available() else "partition"
    timers = SentinelTimers(down_after_ms=settings.failover_sentinel_down_after_ms,
                            min_replicas_max_lag_s=settings.failover_min_replicas_max_lag_s)
    result = asyncio.run(run_redis_drill(settings.state_dir.resolve() / "failover" / "redis-live",
                                         design=settings.failover_redis, fault=fault, timers=timers,
                                         wait_ms=settings.failover_redis_wait_ms, hold_s=3.0))
    summary = result.summary()
    run_id = new_run_id(PATTERN, "live")
    path = write_run(out, run_id=run_id, pattern=PATTERN, source="live",
                     rows=result_rows(result, run_id, condition(fault, 3.0, "sentinel")),
                     parameters={"component": "redis", "designs": [settings.failover_redis], "fault": fault})
    (out / "drills.json").write_text(json.dumps([summary], indent=2))
    if progress:
        progress(f"redis {settings.failover_redis} {fault}: {summary['jepsen']}; "
                 f"{summary['split_brain_writes']} split-brain")
    return path


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None, rate: float | None = None,
        duration: float | None = None, progress: Progress | None = None, unsafe: bool = False,
        processes: int = 1) -> Path:
    """The cells into `out/live/` (and the unsafe design into `out/unsafe/live/`); returns the results CSV."""
    if host is not None:
        raise ServiceError("saaslab load failover starts and strikes the cluster its service writes to, so it cannot "
                           "drive a running service: run `locust -f loadtests/failover.py` against it instead")
    check_processes(processes)
    if not settings.redis_url or not settings.database_url:
        raise ServiceError("no SAASLAB_REDIS_URL / SAASLAB_DATABASE_URL for the failover run's lease and service")
    no_network = network.available()
    cells = QUICK_CELLS if quick else tuple((d, f) for d in SAFE for f in FAULTS)
    skipped = {f"{d}@{f}": no_network for d, f in cells if f == "partition" and no_network}
    cells = tuple(c for c in cells if f"{c[0]}@{c[1]}" not in skipped)
    if progress:
        for cell, why in skipped.items():
            progress(f"failover {cell} skipped: {why}")
    live = _Live(settings, token=settings.admin_token or secrets.token_urlsafe(24), rate=rate or RATE,
                 duration=duration or (QUICK_DURATION_S if quick else DEFAULT_DURATION_S), quick=quick,
                 progress=progress, processes=processes)
    path = live.measure(out / "live", cells, skipped)
    if unsafe:
        live.measure(out / "unsafe" / "live", ((UNSAFE, "pause" if no_network else "partition"),), {})
    redis_drill(settings, out / "redis", progress)
    return path


def timers_of(settings: Settings) -> core.Timers:
    return named_timers(settings.failover_ttl_s, settings.failover_loop_wait_s, settings.failover_retry_timeout_s)


@dataclass
class Cell:
    design: str
    fault: str
    locust: LocustRun
    verdict: invariants.Verdict
    fault_us: int
    failover_s: float | None
    events: list[dict[str, Any]]
    new_primary: str
    topology: dict[str, Any]
    """GET /admin/topology as the service answered it before and after the load."""
    survivors: list[str]


@dataclass
class _Live:
    settings: Settings
    token: str
    rate: float
    duration: float
    quick: bool
    progress: Progress | None
    processes: int

    def measure(self, live: Path, cells: tuple[tuple[str, str], ...], skipped: dict[str, str]) -> Path:
        run_id = new_run_id(PATTERN, "live")
        timers = timers_of(self.settings)
        hold_s = (timers.ttl_us + 2 * timers.loop_wait_us) / core.US_PER_S
        rows: list[Row] = []
        history: list[Op] = []
        checks: list[CheckResult] = []
        drills: list[dict[str, Any]] = []
        state: dict[str, Any] = {}
        for design, fault in cells:
            cell = asyncio.run(self._cell(live / "logs", design, fault, timers, hold_s))
            tag = f"{design}@{fault}"
            history += [_tagged(op, tag) for op in cell.locust.history]
            state[tag] = {"fault_us": cell.fault_us, "survivors": cell.survivors}
            checks += [replace(c, name=f"{c.name}[{tag}]") for c in cell.verdict.checks]
            key = RunKey(run_id=run_id, pattern=PATTERN, design=design, seed=SEED, load_point=0.0, source="live")
            mine = cell_rows(key, cell, condition(fault, hold_s, timers.name, LAG_S), self.duration)
            rows += mine
            drills.append({"design": design, "fault": fault, "jepsen": cell.verdict.count.line(),
                           "count": cell.verdict.count.to_dict(), "split_brain_writes": cell.verdict.split_brain,
                           "failover_s": cell.failover_s, "new_primary": cell.new_primary, "events": cell.events,
                           "statuses": _statuses(cell.locust), "topology": cell.topology})
            if self.progress:
                got = {r.metric.split("@")[0]: r.value for r in mine}
                self.progress(f"failover {tag}: {cell.verdict.count.line()}; {cell.verdict.split_brain} split-brain; "
                              f"failover {got.get('failover_s', float('nan')):.2f} s, writes refused for "
                              f"{got.get('unavailability', float('nan')):.2f} s; {got['responses_503']:.0f} answers "
                              f"503, {got['errors']:.0f} errors; {len(cell.verdict.failed())} checks violated")
        save(live / "history.jsonl", history)
        (live / "state.json").write_text(json.dumps(state))
        (live / "check.json").write_text(json.dumps([c.to_dict() for c in checks], indent=2))
        (live / "drills.json").write_text(json.dumps(drills, indent=2))
        single = {"fault": cells[0][1], "hold_s": hold_s, "timers": timers.name, "lag_ms": LAG_S * 1000} \
            if len(cells) == 1 else {}
        parameters = {"cells": [f"{d}@{f}" for d, f in cells], "skipped": skipped, "rate": self.rate,
                      "duration_s": self.duration, "warmup_s": WARMUP_S, "quick": self.quick,
                      "timers_us": [timers.ttl_us, timers.loop_wait_us, timers.retry_timeout_us],
                      "replicas": self.settings.failover_replicas, "sync_commit": self.settings.failover_sync_commit,
                      "partitions": network.available() or "network namespaces", **single}
        return write_run(live, run_id=run_id, pattern=PATTERN, source="live", rows=rows, parameters=parameters)

    async def _cell(self, logs: Path, design: str, fault: str, timers: core.Timers, hold_s: float) -> Cell:
        settings = self.settings
        root = settings.state_dir.resolve() / "failover" / f"live-{design}-{fault}"
        rig = Rig(root, settings.redis_url or "", design=design, seed=SEED, replicas=settings.failover_replicas,
                  timers=timers, sync_commit=settings.failover_sync_commit,
                  max_lag_bytes=settings.failover_max_lag_bytes)
        if self.progress:
            self.progress(f"failover {design}@{fault}: starting a primary and {settings.failover_replicas} "
                          f"replica(s){'' if rig.net else ' on 127.0.0.1'}")
        async with rig:
            load_done = threading.Event()
            nemesis = asyncio.create_task(self._nemesis(rig, fault, hold_s, load_done))
            try:
                locust, topology = await asyncio.to_thread(self._load, rig, design, fault, logs, load_done)
            finally:
                load_done.set()
            fault_us = await nemesis
            await rig.promoted(fault_us)
            new = await rig.recovered(fault_us)
            survivors = [i for tenant in locust.api_keys for i in await rig.survivors(new, tenant)]
            verdict = invariants.check(locust.history, survivors, fault_us=fault_us)
            return Cell(design, fault, locust, verdict, fault_us, rig.failover_s(fault_us), rig.events(fault_us), new,
                        topology, survivors)

    def _load(self, rig: Rig, design: str, fault: str, logs: Path,
              load_done: threading.Event) -> tuple[LocustRun, dict[str, Any]]:
        label = f"{design}-{fault}"
        overrides = {"failover": design, "failover_members": rig.member_urls(), "failover_lease_key": rig.lease_key}
        try:
            with service(self.settings, token=self.token, overrides=overrides, log_path=logs / f"service-{label}.log",
                         progress=self.progress, describe=f"failover={design}, writes to {len(rig.members())} "
                                                          f"members") as svc:
                before = self._topology(svc.url)
                locust = run_locust(svc.url, LOCUSTFILE, USER_CLASS, token=self.token, processes=self.processes,
                                    run=LoadRun(label=label, seed=SEED, design=design, rate=self.rate,
                                                workload={"duration_s": self.duration}),
                                    budget_s=self.duration + 2 * CLIENT_TIMEOUT_S, logs=logs, progress=self.progress)
                return locust, {"before": before, "after": self._topology(svc.url)}
        finally:
            load_done.set()

    def _topology(self, url: str) -> dict[str, Any]:
        resp = httpx.get(f"{url}/admin/topology", headers={"Authorization": f"Bearer {self.token}"},
                         timeout=CLIENT_TIMEOUT_S)
        return resp.json() if resp.status_code == 200 else {"status": resp.status_code}

    async def _nemesis(self, rig: Rig, fault: str, hold_s: float, load_done: threading.Event) -> int:
        """Strike `WARMUP_S` after the first write reached the primary; heal `hold_s` later. Returns when it struck."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await _written(rig.members()[rig.old]):
            if load_done.is_set() or time.monotonic() > deadline:
                raise ServiceError("the failover load never wrote to the primary; see the service and Locust logs")
            await asyncio.sleep(0.2)
        await asyncio.sleep(WARMUP_S)
        if LAG_S > 0:
            await rig.lag(LAG_S)
        fault_us = await rig.strike(fault)
        rig.release()
        if self.progress:
            self.progress(f"failover: {fault} {rig.old}")
        if fault != "kill":
            await asyncio.sleep(hold_s)
            rig.heal(fault)
        return fault_us


async def _written(member: dict[str, Any]) -> bool:
    try:
        conn = await asyncpg.connect(**member, timeout=2)
    except Exception:
        return False
    try:
        return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE tenant_id <> '')", timeout=2))
    except Exception:
        return False
    finally:
        conn.terminate()


def check_run(out: Path, _settings: Settings | None = None) -> list[CheckResult]:
    """The checks of a finished run from its files alone (what `saaslab check failover --out OUT` runs): each cell's
    ops in `history.jsonl` against its survivors and fault time in `state.json`."""
    live = out / "live"
    state = json.loads((live / "state.json").read_text())
    ops = load(live / "history.jsonl")
    results: list[CheckResult] = []
    for tag, cell in state.items():
        verdict = invariants.check([op for op in ops if op.value.get("cell") == tag], cell["survivors"],
                                   fault_us=int(cell["fault_us"]))
        results += [replace(c, name=f"{c.name}[{tag}]") for c in verdict.checks]
    return results


def _tagged(op: Op, tag: str) -> Op:
    return replace(op, value={**op.value, "cell": tag})


def _statuses(locust: LocustRun) -> dict[str, int]:
    total: dict[str, int] = {}
    for o in locust.outputs:
        for status, n in o["summary"].get("statuses", {}).items():
            total[status] = total.get(status, 0) + int(n)
    return total


def cell_rows(key: RunKey, cell: Cell, suffix: str, duration_s: float) -> list[Row]:
    """One cell's rows (the module docstring names them), each metric carrying the cell's condition."""
    metrics: dict[str, tuple[float, str]] = dict(invariants.rows(cell.verdict))
    if cell.failover_s is not None:
        metrics["failover_s"] = (cell.failover_s, "s")
    statuses = _statuses(cell.locust)
    no_retry_after = sum(int(o["summary"].get("no_retry_after", 0)) for o in cell.locust.outputs)
    fine = {"200", "201", "404", "503"}
    metrics["responses_503"] = (statuses.get("503", 0), "requests")
    metrics["errors"] = (sum(n for s, n in statuses.items() if s not in fine and s != "0") + no_retry_after, "requests")
    metrics["timeouts"] = (statuses.get("0", 0), "requests")
    latency = LatencyHistogram()
    acked_after = 0
    for w in invariants.writes(cell.locust.history):
        if w.outcome == "ok" and w.complete_us is not None:
            latency.record_us(max(1, w.complete_us - w.invoke_us))
            acked_after += w.invoke_us > cell.fault_us
    metrics["write_latency_p50"] = (latency.percentile_ms(50.0), "ms")
    metrics["write_latency_p99"] = (latency.percentile_ms(99.0), "ms")
    metrics["throughput"] = (cell.verdict.count.acknowledged / duration_s, "writes/s")
    metrics["recovered"] = (1.0 if acked_after else 0.0, "bool")
    rows = [key.row(ALL_TENANTS, name + suffix, float(value), unit) for name, (value, unit) in metrics.items()]
    return rows + [replace(r, metric=r.metric + suffix) for r in send_lag_rows(key, cell.locust.open_model())]
