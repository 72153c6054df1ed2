"""Rate-limiting benchmark: what the limiter costs Redis, the service, and a request's tail latency.

Three ratios, each measured in one run on one machine:

1. Redis: the token bucket's EVALSHA rate (through the limiter adapter the service runs,
   `redis_store.RedisRateLimiter`, with the calls it prepares) against the same Redis server's plain SET rate,
   sent the same way: one auto-pipelined hiredis connection, the same number of concurrent callers
   and the same tenants. Target: at least 0.6x.
2. Service: throughput of `GET /v1/projects/{id}` with the limiter on (`token_bucket`, under a
   limit the benchmark never reaches) against off (where the request's one Redis round trip only
   meters usage). Two servers, one per setting. Target: at least 0.75x.
   Beside it, when `redis-benchmark` is on PATH, the same two commands through that C client, whose
   rates are Redis's own (one request per round trip, and pipelined).
3. Tail: an open-model load (constant arrival rate, each request timed from its intended send
   time) at half of the limiter-off service's saturation, the rate at which that server is half
   busy (`httpload.calibrate_rate`, starting from half its closed-loop throughput; why that start
   is not itself the operating point: `httpload.BUSY_SHARE_NOTE`), against both servers; the p99
   the limiter adds. Target: at most 1 ms.

As in `bench/tenancy.py`: each server is one uvicorn worker pinned to one core and the load
generator is pinned to the other; rounds come in adjacent pairs in ABBA order so background drift
hits both sides alike, and each figure is the median of its per-pair ratios (or differences). The
CPU columns (server CPU time per request, from /proc; Redis's own CPU per call, from INFO) are the
same comparisons, less sensitive to other load on the machine. Redis itself is not ours to pin,
and when it is shared its CPU figures include other clients' work.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
from redis import Redis as SyncRedis

from bench import httpload
from bench.tenancy import (
    CONNECTIONS,
    UNREACHABLE_LIMIT,
    _cpu_s,
    _round,
    bench_services,
    project_request,
    start_server,
    stop_server,
)
from reference_impl.common.redis_client import Arg, ScriptRunner, make_redis
from reference_impl.common.usage import usage_period
from reference_impl.ratelimit.core import Policy
from reference_impl.ratelimit.redis_store import RedisRateLimiter
from saaslab.services import ServiceError, free_port
from saaslab.settings import Settings

ALGORITHM = "token_bucket"
PAIRS = 4
TENANTS = 1000
"""Distinct tenants (keys) the Redis comparison spreads its calls over, alike on both sides."""
CONCURRENCY = CONNECTIONS
"""Concurrent callers on the one Redis connection: as many as the service's HTTP benchmark keeps in flight."""
OPEN_LOAD = 0.5
"""Half of saturation: the share of its core the limiter-off server is kept busy under the open model (and the
share of its closed-loop throughput the calibration starts from)."""
LIMITER_TIMEOUT_MS = 2000
TARGET_REDIS = 0.6
TARGET_SERVICE = 0.75
TARGET_ADDED_P99_MS = 1.0
Call = tuple[Sequence[Arg], Sequence[Arg]]


class _SetRunner(ScriptRunner):
    """`ScriptRunner`'s auto-pipelining and connection, sending a plain `SET key value` per call.

    Benchmark-only: the baseline the limiter's EVALSHA is compared with must travel the same way
    (calls made in one loop turn leave in one write, replies matched in order), or the ratio would
    measure the client rather than Redis.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url, "")

    def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> asyncio.Future[Any]:
        return self.command("SET", keys[0], args[0])


async def _redis_cpu_s(redis: Any) -> float:
    info = await redis.info("cpu")
    if "used_cpu_user_main_thread" in info:  # the thread that runs commands and scripts
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _drive(runner: Callable[..., asyncio.Future[Any]], calls: Sequence[Call], seconds: float) -> int:
    """`CONCURRENCY` callers, each awaiting its call before the next, cycling through `calls`; the calls made."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def caller(i: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            keys, args = calls[i % len(calls)]
            await runner(keys, args)
            i += CONCURRENCY
            done += 1

    await asyncio.gather(*(caller(i) for i in range(CONCURRENCY)))
    return done


async def _redis_pairs(settings: Settings, prefix: str, seconds: float) -> list[dict]:
    assert settings.redis_url
    tenants = [uuid.uuid4().hex for _ in range(TENANTS)]
    policy = Policy.from_limits(UNREACHABLE_LIMIT["requests"], UNREACHABLE_LIMIT["window_s"])
    period = usage_period(time.time())
    limiter = RedisRateLimiter(settings.redis_url, prefix, ALGORITHM)
    # The calls RateLimitService prepares for a tenant with this policy.
    calls: dict[str, list[Call]] = {
        "evalsha": [limiter.invocation(t, policy, period) for t in tenants],
        "set": [((f"{prefix}:{{{t}}}:set",), (b"1",)) for t in tenants],
    }
    runners = {"evalsha": limiter.runner, "set": _SetRunner(settings.redis_url)}
    redis = make_redis(settings)
    client = psutil.Process()
    try:
        reply = await runners["evalsha"](*calls["evalsha"][0])
        if int(reply[0]) != 1:
            raise ServiceError(f"the limiter refused a call under an unreachable limit: {reply}")
        for name, runner in runners.items():  # connect, load the script, touch every key once
            await _drive(runner, calls[name], 1.0)
        pairs = []
        for i in range(PAIRS):
            pair = {}
            for name in ("set", "evalsha") if i % 2 == 0 else ("evalsha", "set"):
                redis_cpu, client_cpu, started = await _redis_cpu_s(redis), _cpu_s(client), time.perf_counter()
                n = await _drive(runners[name], calls[name], seconds)
                wall = time.perf_counter() - started
                pair[name] = {"ops": n / wall,
                              "redis_cpu_us": 1e6 * (await _redis_cpu_s(redis) - redis_cpu) / max(n, 1),
                              "client_cpu_share": (_cpu_s(client) - client_cpu) / wall}
            pairs.append(pair)
        return pairs
    finally:
        for runner in runners.values():
            await runner.close()
        await redis.aclose()


def bench_redis(settings: Settings, prefix: str, seconds: float) -> dict:
    pairs = httpload.run(_redis_pairs(settings, prefix, seconds))
    ratio = statistics.median(p["evalsha"]["ops"] / p["set"]["ops"] for p in pairs)
    cpu_ratio = statistics.median(p["set"]["redis_cpu_us"] / p["evalsha"]["redis_cpu_us"] for p in pairs)
    return {"ratio": ratio, "cpu_ratio": cpu_ratio, "meets_target": ratio >= TARGET_REDIS, "target": TARGET_REDIS,
            "ops": {n: statistics.median(p[n]["ops"] for p in pairs) for n in ("set", "evalsha")},
            "redis_cpu_us": {n: statistics.median(p[n]["redis_cpu_us"] for p in pairs) for n in ("set", "evalsha")},
            "client_cpu_share_max": max(p[n]["client_cpu_share"] for p in pairs for n in p),
            "tenants": TENANTS, "concurrency": CONCURRENCY, "pairs": pairs}


REDIS_BENCHMARK_MODES = {"one request per round trip": ("-P", "1", "-c", "32"),
                         "pipelined 16 deep": ("-P", "16", "-c", "16")}
"""redis-benchmark's figures, when it is on PATH (Debian's redis-tools; the project's wheels do not ship it).
A C client overlaps its work with Redis's, so its rates are Redis's own: one request per round trip is how
redis-benchmark is usually quoted (and where a socket read and write per call dominate a SET); pipelined, Redis's
command and script execution is all that counts."""
REDIS_BENCHMARK_REQUESTS = 100_000


def _redis_benchmark_rps(binary: str, url: str, mode: tuple[str, ...], command: Sequence[str]) -> float:
    u = urlparse(url)
    args = [binary, "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379), "--dbnum", u.path.strip("/") or "0",
            *(("-a", u.password) if u.password else ()), "--csv", *mode, "-n", str(REDIS_BENCHMARK_REQUESTS),
            "-r", str(TENANTS), *command]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = list(csv.reader(out.splitlines()))
    return float(rows[-1][1])


def bench_redis_benchmark(settings: Settings, prefix: str) -> dict | None:
    """EVALSHA against SET through redis-benchmark (`REDIS_BENCHMARK_MODES`), ABBA pairs; None without it."""
    binary = shutil.which("redis-benchmark")
    if binary is None or not settings.redis_url:
        return None
    policy = Policy.from_limits(UNREACHABLE_LIMIT["requests"], UNREACHABLE_LIMIT["window_s"])
    limiter = RedisRateLimiter(settings.redis_url, prefix, ALGORITHM)
    tenant = "__rand_int__"  # redis-benchmark's placeholder: TENANTS distinct tenants, keyed as the service keys them
    keys, args = limiter.invocation(tenant, policy, usage_period(time.time()))
    commands = {
        "set": ("SET", f"{prefix}:{{{tenant}}}:set", "1"),
        "evalsha": ("EVALSHA", limiter.runner.sha, str(len(keys)), *keys, *(str(a) for a in args)),
    }
    rows = {}
    for mode, flags in REDIS_BENCHMARK_MODES.items():
        pairs = [{n: _redis_benchmark_rps(binary, settings.redis_url, flags, commands[n]) for n in order}
                 for order in (("set", "evalsha"), ("evalsha", "set"), ("set", "evalsha"), ("evalsha", "set"))]
        rows[mode] = {"ratio": statistics.median(p["evalsha"] / p["set"] for p in pairs),
                      "ops": {n: statistics.median(p[n] for p in pairs) for n in ("set", "evalsha")}, "pairs": pairs}
    lua_cost = bench_lua_cost(settings, binary, commands["evalsha"], commands["set"])
    return {"binary": binary, "requests": REDIS_BENCHMARK_REQUESTS, "modes": rows, "lua_cost": lua_cost}


LUA_COST_VARIANTS = {
    "an empty script (the same keys, arguments and reply shape)": "return {1, 0, 0, 0, 0, 0}",
    "the script's Redis calls alone (TIME, GET, SET PX, INCR; no logic)":
        "redis.call('TIME') redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], '0123456789abcdef', 'PX', 1000) "
        "return {1, 0, 0, 0, redis.call('INCR', KEYS[2]), 0}",
}
"""What running the limiter's script costs Redis, split: the fixed cost of any script, then of its calls."""


def _commandstats(client: Any, command: str) -> tuple[int, int]:
    """(calls, usec) of one command in INFO commandstats."""
    row = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(row.get("calls", 0)), int(row.get("usec", 0))


def bench_lua_cost(settings: Settings, binary: str, command: Sequence[str],
                   set_command: Sequence[str]) -> dict:
    """Redis's own time per call (INFO commandstats: the differences over one redis-benchmark run, so a
    shared server's earlier counts do not matter) for SET, the `LUA_COST_VARIANTS` and the limiter itself,
    each sent one request per round trip with the limiter's keys and arguments."""
    client = SyncRedis.from_url(settings.redis_url)
    mode = REDIS_BENCHMARK_MODES["one request per round trip"]

    def usec_per_call(name: str, cmd: Sequence[str]) -> tuple[float, float]:
        calls, usec = _commandstats(client, name)
        rps = _redis_benchmark_rps(binary, settings.redis_url, mode, cmd)
        calls2, usec2 = _commandstats(client, name)
        return (usec2 - usec) / max(calls2 - calls, 1), rps

    try:
        rows = {"SET": usec_per_call("set", set_command)}
        for label, source in LUA_COST_VARIANTS.items():
            sha = client.script_load(source)
            rows[label] = usec_per_call("evalsha", ("EVALSHA", sha, *command[2:]))
        rows[f"the `{ALGORITHM}` limiter as shipped"] = usec_per_call("evalsha", command)
    finally:
        client.close()
    set_us, set_rps = rows["SET"]
    # One request per round trip, Redis's time per request is the fixed cost of a round trip (read, parse,
    # reply, write) plus the command's own; a script reaches TARGET_REDIS of SET's rate only within this.
    round_trip_us = 1e6 / set_rps - set_us
    budget_us = 1e6 / (TARGET_REDIS * set_rps) - round_trip_us
    return {"usec_per_call": {k: v[0] for k, v in rows.items()}, "rps": {k: v[1] for k, v in rows.items()},
            "round_trip_us": round_trip_us, "script_budget_us": budget_us}


def _open_round(server: psutil.Process, port: int, request: bytes, rate: float, seconds: float) -> dict:
    server_cpu = _cpu_s(server)
    o = httpload.run(httpload.open_loop("127.0.0.1", port, request, rate=rate, seconds=seconds))
    if o.result.errors:
        raise ServiceError(f"benchmark requests failed: {o.result.errors} errors, statuses {o.result.status_counts}")
    return o.figures(_cpu_s(server) - server_cpu)


def _decisions(port: int) -> dict[str, float]:
    """The limiter's decisions by outcome, from the server's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^saaslab_ratelimit_decisions_total\{outcome="(\w+)"\} (\S+)$', text, re.M)} if text else {}


def bench_service(settings: Settings, prefix: str, seconds: float) -> dict:
    ports = {"off": free_port(), "on": free_port()}
    procs = {}
    try:
        for name, port in ports.items():
            # A generous limiter timeout: a stall of the shared machine must not turn into failing open,
            # which skips Redis and would make the limiter look free.
            procs[name] = start_server(settings, port, SAASLAB_REDIS_PREFIX=prefix, SAASLAB_RATELIMIT_MODE="enforce",
                                       SAASLAB_RATELIMIT="off" if name == "off" else ALGORITHM,
                                       SAASLAB_RATELIMIT_TIMEOUT_MS=str(LIMITER_TIMEOUT_MS))
        requests = {name: project_request(procs[name].url, port, f"bench-ratelimit-{name}")
                    for name, port in ports.items()}
        servers = {name: psutil.Process(proc.pid) for name, proc in procs.items()}
        for name, port in ports.items():  # warm caches, pools and prepared statements
            httpload.run(httpload.closed_loop("127.0.0.1", port, requests[name], connections=CONNECTIONS,
                                              seconds=1.0))
        orders = [("off", "on") if i % 2 == 0 else ("on", "off") for i in range(PAIRS)]
        closed = [{n: _round(servers[n], ports[n], requests[n], seconds) for n in order} for order in orders]
        saturation = statistics.median(p["off"]["rps"] for p in closed)
        # Half of saturation: the rate at which the limiter-off server is half busy (httpload.BUSY_SHARE_NOTE).
        calibration = httpload.calibrate_rate(
            lambda r: _open_round(servers["off"], ports["off"], requests["off"], r, httpload.CALIBRATION_S),
            OPEN_LOAD * saturation, OPEN_LOAD)
        rate = calibration.rate
        opened = [{n: _open_round(servers[n], ports[n], requests[n], rate, seconds) for n in order}
                  for order in orders]
        decisions = _decisions(ports["on"])
    finally:
        for proc in procs.values():
            stop_server(proc)
    # Failing open would make "on" look cheap: every decision must have come from Redis, and allowed.
    if not decisions.get("allowed") or any(v for k, v in decisions.items() if k != "allowed"):
        raise ServiceError(f"the limiter did not allow every request from Redis: {decisions}")
    ratio = statistics.median(p["on"]["rps"] / p["off"]["rps"] for p in closed)
    cpu_ratio = statistics.median(p["off"]["server_cpu_us"] / p["on"]["server_cpu_us"] for p in closed)
    added = statistics.median(p["on"]["p99_ms"] - p["off"]["p99_ms"] for p in opened)
    caveat, remark = httpload.tail_caveat([list(p.values()) for p in opened], "pairs")
    return {
        "throughput": {"ratio": ratio, "cpu_ratio": cpu_ratio, "target": TARGET_SERVICE,
                       "meets_target": ratio >= TARGET_SERVICE,
                       "rps": {n: statistics.median(p[n]["rps"] for p in closed) for n in ports},
                       "server_cpu_us": {n: statistics.median(p[n]["server_cpu_us"] for p in closed) for n in ports},
                       "client_cpu_share_max": max(p[n]["client_cpu_share"] for p in closed for n in ports),
                       "connections": CONNECTIONS, "pairs": closed},
        "added_p99": {"added_ms": added, "target_ms": TARGET_ADDED_P99_MS,
                      "meets_target": added <= TARGET_ADDED_P99_MS and not caveat,
                      "saturation_rps": saturation, "rate": rate, "calibration": calibration.rounds,
                      "p50_ms": {n: statistics.median(p[n]["p50_ms"] for p in opened) for n in ports},
                      "p99_ms": {n: statistics.median(p[n]["p99_ms"] for p in opened) for n in ports},
                      "server_cpu_us": {n: statistics.median(p[n]["server_cpu_us"] for p in opened) for n in ports},
                      "busy_share": {n: statistics.median(p[n]["busy_share"] for p in opened) for n in ports},
                      "send_lag_p99_ms_max": max(p[n]["send_lag_p99_ms"] for p in opened for n in ports),
                      "dropped": {n: sum(p[n]["dropped"] for p in opened) for n in ports},
                      "caveat": caveat, "remark": remark,
                      "pairs": opened},
        "decisions": decisions,
    }


async def _drop_keys(settings: Settings, prefix: str) -> None:
    redis = make_redis(settings)
    try:
        batch = []
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await redis.unlink(*batch)
                batch = []
        if batch:
            await redis.unlink(*batch)
    finally:
        await redis.aclose()


def _yes(met: bool) -> str:
    return "yes" if met else "no"


def run(out: Path, *, seconds: float = 4.0) -> dict:
    prefix = f"bench-rl-{uuid.uuid4().hex[:8]}"  # this run's keys only, dropped at the end
    with bench_services() as settings:
        try:
            redis_row = bench_redis(settings, prefix, seconds)  # loads the script, so its SHA is known
            redis_row["redis_benchmark"] = bench_redis_benchmark(settings, prefix)
            service = bench_service(settings, prefix, seconds)
        finally:
            httpload.run(_drop_keys(settings, prefix))
    tp, tail = service["throughput"], service["added_p99"]
    md = [f"The `{ALGORITHM}` limiter, {PAIRS} ABBA pairs of {seconds:g} s rounds; each figure the median of "
          f"its per-pair ratios (differences). CPU columns: the same comparison by CPU time per call, less "
          f"sensitive to other load on the machine.", "",
          "| figure | baseline | with limiter | result | target | target met | CPU ratio |",
          "| --- | --- | --- | --- | --- | --- | --- |",
          f"| Redis: EVALSHA rate / SET rate | {redis_row['ops']['set']:.0f} SET/s | "
          f"{redis_row['ops']['evalsha']:.0f} EVALSHA/s | {redis_row['ratio']:.2f}x | >= {TARGET_REDIS}x | "
          f"{_yes(redis_row['meets_target'])} | {redis_row['cpu_ratio']:.2f} |",
          f"| Service: throughput on / off | {tp['rps']['off']:.0f} rps | {tp['rps']['on']:.0f} rps | "
          f"{tp['ratio']:.2f}x | >= {TARGET_SERVICE}x | {_yes(tp['meets_target'])} | {tp['cpu_ratio']:.2f} |",
          f"| Added p99 at {OPEN_LOAD:g} x saturation (open model, {tail['rate']:.0f} rps: the off server "
          f"{100 * tail['busy_share']['off']:.0f}% busy) | "
          f"{tail['p99_ms']['off']:.2f} ms | {tail['p99_ms']['on']:.2f} ms | {tail['added_ms']:+.2f} ms | "
          f"<= {TARGET_ADDED_P99_MS:g} ms | "
          f"{httpload.verdict(tail['added_ms'] <= TARGET_ADDED_P99_MS, tail['caveat'])} | |",
          "",
          f"Redis: one auto-pipelined hiredis connection each side (the service's `ScriptRunner`, and the same "
          f"runner sending SET), {CONCURRENCY} concurrent callers, {TENANTS} tenants; Redis CPU per call "
          f"{redis_row['redis_cpu_us']['set']:.1f} us (SET) and {redis_row['redis_cpu_us']['evalsha']:.1f} us "
          f"(EVALSHA); client CPU at most {100 * redis_row['client_cpu_share_max']:.0f}% of its core. "
          f"Service: `GET /v1/projects/{{id}}`, one worker per setting, {CONNECTIONS} keep-alive connections; "
          f"limiter off still meters usage in its one Redis round trip; server CPU per request "
          f"{tp['server_cpu_us']['off']:.0f} us (off) and {tp['server_cpu_us']['on']:.0f} us (on). "
          f"Open model: latency from each request's intended send time, p50 {tail['p50_ms']['off']:.2f} ms (off) "
          f"and {tail['p50_ms']['on']:.2f} ms (on), the generator's own send lag p99 at most "
          f"{tail['send_lag_p99_ms_max']:.3f} ms; server CPU per request {tail['server_cpu_us']['off']:.0f} us (off) "
          f"and {tail['server_cpu_us']['on']:.0f} us (on), so the servers were "
          f"{100 * tail['busy_share']['off']:.0f}% (off) and {100 * tail['busy_share']['on']:.0f}% (on) busy. "
          f"Closed-loop saturation {tail['saturation_rps']:.0f} rps (off); at half of it "
          f"({tail['calibration'][0]['rate']:.0f} rps, the first calibration round) the off server was "
          f"{100 * tail['calibration'][0]['busy_share']:.0f}% busy and its p99 {tail['calibration'][0]['p99_ms']:.2f} ms.",
          "", httpload.BUSY_SHARE_NOTE]
    rb = redis_row["redis_benchmark"]
    if rb is None:
        md += ["", "redis-benchmark is not on PATH, so the Redis ratio has no C-client figure beside it."]
    else:
        md += ["", f"The same EVALSHA against SET through `redis-benchmark` ({rb['requests']} requests a round, "
                   f"{TENANTS} tenants, 2 ABBA pairs; a C client, so the rates are Redis's own): " + "; ".join(
                       f"{mode}: {r['ops']['evalsha']:.0f} EVALSHA/s against {r['ops']['set']:.0f} SET/s, "
                       f"{r['ratio']:.2f}x" for mode, r in rb["modes"].items()) + "."]
        cost = rb["lua_cost"]
        md += ["", "Where an EVALSHA's time goes: Redis's own time per call (`INFO commandstats`), one request per "
                   "round trip, the limiter's keys and arguments:", "",
               "| command | Redis time per call | rate |", "| --- | --- | --- |",
               *(f"| {name} | {us:.2f} us | {cost['rps'][name]:.0f}/s |" for name, us in cost["usec_per_call"].items()),
               "", f"Sent one at a time, every request also costs Redis a fixed {cost['round_trip_us']:.1f} us (the "
                   f"SET's {1e6 / cost['rps']['SET']:.1f} us a request, less the command), so the limiter reaches "
                   f"{TARGET_REDIS}x of SET's rate only if its script costs Redis at most "
                   f"{cost['script_budget_us']:.1f} us a call."]
    if tail["remark"]:
        md += ["", f"Added p99: {tail['remark']}."]
    if any(tail["dropped"].values()):
        md += ["", f"Open model: {tail['dropped']['off']} (off) and {tail['dropped']['on']} (on) requests dropped "
                   f"because {httpload.MAX_IN_FLIGHT} were already outstanding (a stall); the p99s leave them out."]
    result = {"benchmark": "ratelimit", "algorithm": ALGORITHM, "seconds": seconds, "redis": redis_row,
              **service, "markdown": md, "machine_cpus": os.cpu_count()}
    (out / "ratelimit.json").write_text(json.dumps(result, indent=2))
    return result
