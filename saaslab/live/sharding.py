"""`saaslab load sharding`: Zipf tenants on real PostgreSQL shard servers, a tenant moved and the hottest isolated
while they write, every shard read back and judged by the checker.

Unless `SAASLAB_SHARD_URLS` is set, it starts `SHARDS` + 1 shard servers from the embedded PostgreSQL binaries
(reference_impl/sharding/servers.py, under `<state_dir>/shards/`: the last is the spare the isolation takes)
and stops them when it ends, however it ends. Each run gets fresh databases: `saaslab` on every shard server
it started, and a control database of its own (`<main database>_sharding`, on the main server, holding the
tenants, the directory and the jobs; dropped when the run ends), so no earlier run's placements or jobs leak
in. The service runs with
`WORKERS` workers (each with its own placement cache, so a move's cutover is seen across workers only through
the fence and the cache lease), lab mode on, and `SAASLAB_SHARD_MOVER` the mover under test. Locust runs
`loadtests/sharding.py`'s `ShardedTenants` (its docstring has the scenario); then the directory is read through
`GET /admin/tenants/{id}/placement` and every shard's rows of the run's tenants straight from the shard, and
`reference_impl.sharding.invariants.check` judges the history against them.

With `unsafe`, the same run with the `unsafe` mover (on the same shard servers, fresh databases) goes to
`<out>/unsafe/live/`: its checks are expected to fail (`saaslab check sharding --out <out>/unsafe`). With
`host`, the run drives that service (started on shard URLs, `SAASLAB_SHARD_URLS`, reachable from here) and
reads back the shards its `GET /admin/config` names.

Rows (source `live`, load point 0, the metric names of the simulation, saaslab/reports/sharding/): under the
mover's name, `write_blocked_ms`, `move_duration_ms`, `moved_rows`, `write_latency_p99` (the moved tenant's
acknowledged writes) of the move, the same prefixed `isolate_` for the isolation, `lost_writes` (acknowledged
writes on no shard), `latency_p50` / `latency_p99` (every completed request, from its intended send time),
`requests`, `errors`, `timeouts`, `dropped`, `fenced_503` (writes answered 503 at a fence) and `anomalies`
(violations of all checks); under the router's name, `load_max_over_mean` (the busiest initial shard's
requests over the mean, by the placements before the moves). Files: `results.csv`, `run.json` (its
parameters carry the cell: `tenant_rows`, `write_rate`, `tenants`, `shards`, `zipf`), `history.jsonl`,
`state.json` (the world read back), `check.json`, and the service and Locust logs.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from loadtests.common.openmodel import OpenModelResult
from loadtests.common.runconfig import LoadRun
from reference_impl.sharding.invariants import ShardWorld, check
from reference_impl.sharding.servers import ShardServers
from saaslab.history import CheckResult, save
from saaslab.live.harness import CLIENT_TIMEOUT_S, LocustRun, Progress, run_locust, served_settings, service
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios.kernel.metrics import RunKey

PATTERN = "sharding"
LOCUSTFILE = "sharding"
USER_CLASS = "ShardedTenants"
SHARDS = 3
"""Active shards; one more server is started as the spare the isolation takes."""
WORKERS = 2
UNSAFE = "unsafe"
DEFAULT_RATE = 80.0
DEFAULT_DURATION_S = 15.0
QUICK_DURATION_S = 5.0
SEED = 1
CONTROL_SUFFIX = "_sharding"


def run(settings: Settings, out: Path, *, quick: bool = False, host: str | None = None, rate: float | None = None,
        duration: float | None = None, progress: Progress | None = None, unsafe: bool = False,
        processes: int = 1) -> Path:
    """The fenced mover into `out/live/` (and the unsafe one into `out/unsafe/live/`); returns the results CSV."""
    token = settings.admin_token or secrets.token_urlsafe(24)
    rate = rate or DEFAULT_RATE
    duration = duration or (QUICK_DURATION_S if quick else DEFAULT_DURATION_S)
    measure = {"token": token, "rate": rate, "duration": duration, "quick": quick, "progress": progress,
               "processes": processes}
    if host is not None:
        settings, _ = served_settings(settings, host, token)
        urls = _urls(settings)
        if not urls:
            raise ServiceError(f"the service at {host} runs on one database (no SAASLAB_SHARD_URLS): start it on "
                               "shard servers, as loadtests/sharding.py's docstring shows")
        return _measure(settings, out / "live", settings.shard_mover, urls, host=host, fresh=None, **measure)
    with _shard_servers(settings, progress) as servers:
        urls = servers.urls if servers is not None else _urls(settings)
        path = _measure(settings, out / "live", "fenced", urls, host=None, fresh=servers, **measure)
        if unsafe:
            _measure(settings, out / "unsafe" / "live", UNSAFE, urls, host=None, fresh=servers, **measure)
    return path


def _urls(settings: Settings) -> list[str]:
    return [u.strip() for u in settings.shard_urls.split(",") if u.strip()]


@contextlib.contextmanager
def _shard_servers(settings: Settings, progress: Progress | None) -> Iterator[ShardServers | None]:
    """`SHARDS` + 1 embedded shard servers, stopped when the block ends; None when SAASLAB_SHARD_URLS names them."""
    if _urls(settings):
        yield None
        return
    servers = ShardServers(settings.state_dir, SHARDS + 1)
    if progress:
        progress(f"starting {SHARDS + 1} shard servers ({SHARDS} active, 1 spare) under "
                 f"{settings.state_dir / 'shards'}")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@contextlib.contextmanager
def _fresh_control(settings: Settings) -> Iterator[str]:
    """A fresh control database beside the main one for the block: the run's tenants, directory and jobs, and
    nothing older; dropped when the block ends (what the checker needs is in the run's files by then)."""
    if not settings.database_url:
        raise ServiceError("no SAASLAB_DATABASE_URL to make the sharding control database on")
    base, _, name = settings.database_url.rpartition("/")
    name = name.split("?")[0] + CONTROL_SUFFIX
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        c.execute(drop)
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as c:
            c.execute(drop)


def _measure(settings: Settings, live: Path, mover: str, urls: list[str], *, token: str, host: str | None,
             fresh: ShardServers | None, rate: float, duration: float, quick: bool, progress: Progress | None,
             processes: int) -> Path:
    run_id = new_run_id(PATTERN, "live")
    overrides: dict[str, Any] = {}
    router, shards = settings.shard_router, min(SHARDS, len(urls)) if host is None else settings.shards
    with contextlib.ExitStack() as stack:
        if host is None:
            if fresh is not None:
                fresh.recreate_databases()
            overrides = {"shard_mover": mover, "shard_urls": ",".join(urls), "shards": shards,
                         "database_url": stack.enter_context(_fresh_control(settings))}
        svc = stack.enter_context(service(
            settings, token=token, overrides=overrides, log_path=live / "logs" / f"service-{mover}.log", host=host,
            workers=WORKERS, progress=progress,
            describe=f"shard_mover={mover}, {len(urls)} shard servers, {WORKERS} workers"))
        locust = run_locust(svc.url, LOCUSTFILE, USER_CLASS, token=token, processes=processes,
                            run=LoadRun(label=mover, seed=SEED, design=mover, rate=rate,
                                        workload={"duration_s": duration}),
                            budget_s=duration + 2 * CLIENT_TIMEOUT_S, logs=live / "logs", progress=progress)
        tenants = sorted(locust.api_keys)
        world = ShardWorld.from_dict({"shards": read_shards(urls, tenants),
                                      "directory": _directory(svc.url, token, tenants), "initial": {}})
    results = check(locust.history, world)
    key = RunKey(run_id=run_id, pattern=PATTERN, design=mover, seed=SEED, load_point=0.0, source="live")
    main = next(o for o in locust.outputs if int(o["worker_index"]) == 0)["summary"]
    rows = mover_rows(key, locust, world, results) + router_rows(key, router, shards, locust)
    save(live / "history.jsonl", locust.history)
    (live / "state.json").write_text(json.dumps(world.to_dict()))
    (live / "check.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    plan = main["plan"]
    moved = _job_move(main, "move")
    weight = _zipf_share(plan["tenants"], plan["zipf_s"], 1)
    if progress:
        got = {r.metric: r.value for r in rows}
        progress(f"shard_mover={mover}: {got['requests']:.0f} requests, p99 {got['latency_p99']:.0f} ms; move "
                 f"blocked writes {got.get('write_blocked_ms', float('nan')):.0f} ms, {got.get('moved_rows', 0):.0f}"
                 f" rows; isolation blocked {got.get('isolate_write_blocked_ms', float('nan')):.0f} ms; "
                 f"{got['lost_writes']:.0f} acknowledged writes lost; {sum(not r.valid for r in results)} checks "
                 f"violated")
    return write_run(live, run_id=run_id, pattern=PATTERN, source="live", rows=rows, parameters={
        "mover": mover, "designs": [mover], "router": router, "rate": rate, "duration_s": duration, "quick": quick,
        "workers": WORKERS,
        "host": host, "shard_servers": len(urls), "shards": shards, "tenants": plan["tenants"],
        "zipf": plan["zipf_s"], "cutover_delay_ms": plan["cutover_delay_ms"],
        "tenant_rows": moved.get("target_rows") or moved.get("copied_rows"),
        "write_rate": round(rate * weight * (1 - plan["read_share"]), 3),
        "placements": main["placements"], "jobs": main["jobs"],
        "counters": [o["summary"]["counters"] for o in locust.outputs]})


def read_shards(urls: list[str], tenants: list[str]) -> dict[str, dict[str, list[str]]]:
    """shard -> tenant -> the names (write keys) of its projects there, for `tenants`, read from every shard."""
    out: dict[str, dict[str, list[str]]] = {}
    for i, url in enumerate(urls):
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as c:
                rows = c.execute("SELECT tenant_id::text, name FROM projects WHERE tenant_id = ANY(%s::uuid[])",
                                 (tenants,)).fetchall()
        except psycopg.Error as e:
            raise ServiceError(f"could not read shard {i} back ({url}): {e}") from None
        per: dict[str, list[str]] = {}
        for tenant, name in rows:
            per.setdefault(tenant, []).append(name)
        out[str(i)] = per
    return out


def _directory(url: str, token: str, tenants: list[str]) -> dict[str, int]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=CLIENT_TIMEOUT_S) as c:
        out = {}
        for t in tenants:
            resp = c.get(f"/admin/tenants/{t}/placement")
            if resp.status_code != 200:
                raise ServiceError(f"GET /admin/tenants/{t}/placement answered HTTP {resp.status_code}")
            out[t] = int(resp.json()["shard"])
        return out


def _zipf_share(n: int, s: float, rank: int) -> float:
    weights = [1.0 / (k ** s) for k in range(1, n + 1)]
    return weights[rank % n] / sum(weights)


def _job_move(summary: dict[str, Any], kind: str) -> dict[str, Any]:
    """The first move of the run's `kind` job ({} if it did not run)."""
    for job in summary.get("jobs", []):
        if job["kind"] == kind and job.get("job"):
            return {**(job["job"].get("moves") or [{}])[0], "state": job["job"]["state"]}
    return {}


def mover_rows(key: RunKey, locust: LocustRun, world: ShardWorld, results: list[CheckResult]) -> list[Row]:
    main = next(o for o in locust.outputs if int(o["worker_index"]) == 0)["summary"]
    rows: list[Row] = []
    for kind, prefix, tenant in (("move", "", main["moved"]), ("isolate", "isolate_", main["isolated"])):
        m = _job_move(main, kind)
        if not m:
            continue
        rows += [key.row(ALL_TENANTS, f"{prefix}write_blocked_ms", m.get("write_blocked_ms") or 0.0, "ms"),
                 key.row(ALL_TENANTS, f"{prefix}move_duration_ms", m.get("duration_ms") or float("nan"), "ms"),
                 key.row(ALL_TENANTS, f"{prefix}moved_rows", m.get("target_rows") or m.get("copied_rows") or 0,
                         "rows")]
        latency = LatencyHistogram()
        for o in locust.outputs:
            encoded = o["summary"]["write_latency"].get(tenant)
            if encoded:
                latency.add(LatencyHistogram.decode(encoded))
        if latency.count:
            rows.append(key.row(ALL_TENANTS, f"{prefix}write_latency_p99", latency.percentile_ms(99.0), "ms"))
    where = world.where()
    acked = [op.value["key"] for op in locust.history if op.f == "write" and op.type == "ok"]
    model = locust.open_model()
    latency = LatencyHistogram()
    for c in model.tenants.values():
        latency.add(c.latency)
    total = _totals(model)
    rows += [
        key.row(ALL_TENANTS, "lost_writes", sum(1 for k in acked if not where.get(k)), "writes"),
        key.row(ALL_TENANTS, "latency_p50", latency.percentile_ms(50.0) if latency.count else float("nan"), "ms"),
        key.row(ALL_TENANTS, "latency_p99", latency.percentile_ms(99.0) if latency.count else float("nan"), "ms"),
        key.row(ALL_TENANTS, "requests", model.sent, "requests"),
        key.row(ALL_TENANTS, "errors", total["errors"], "requests"),
        key.row(ALL_TENANTS, "timeouts", total["timeouts"], "requests"),
        key.row(ALL_TENANTS, "dropped", model.dropped, "requests"),
        key.row(ALL_TENANTS, "fenced_503", sum(o["summary"]["counters"]["fenced_503"] for o in locust.outputs),
                "requests"),
        key.row(ALL_TENANTS, "anomalies", sum(r.violations for r in results), "count"),
    ]
    return rows


def _totals(model: OpenModelResult) -> dict[str, int]:
    return {k: sum(getattr(c, k) for c in model.tenants.values()) for k in ("errors", "timeouts")}


def router_rows(key: RunKey, router: str, shards: int, locust: LocustRun) -> list[Row]:
    """`load_max_over_mean` under the router's name: requests per initial shard, by the placements before any move."""
    main = next(o for o in locust.outputs if int(o["worker_index"]) == 0)["summary"]
    initial = main["placements"].get("initial") or {}
    model = locust.open_model()
    per_shard = dict.fromkeys(sorted({*range(shards), *initial.values()}), 0)
    for tenant, counters in model.tenants.items():
        if tenant in initial:
            per_shard[initial[tenant]] += counters.sent
    if not per_shard or not sum(per_shard.values()):
        return []
    mean = sum(per_shard.values()) / len(per_shard)
    routed = RunKey(run_id=key.run_id, pattern=key.pattern, design=router, seed=key.seed, load_point=0.0,
                    source="live")
    return [routed.row(ALL_TENANTS, "load_max_over_mean", max(per_shard.values()) / mean, "ratio")]
