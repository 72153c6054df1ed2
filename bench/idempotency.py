"""Idempotency benchmark: what a design costs a payment, and how fast it answers a replay.

Two figures, measured in one run on one machine:

1. Throughput of `POST /v1/payments` under each design (`redis`, `postgres`) against `none`, every
   request with an Idempotency-Key never sent before, so each one claims a key, charges the lab
   provider and records a payment. `none` gets the header too (it validates and fingerprints, then
   stores nothing), so the ratio is the cost of the design's store, not of parsing a header. No
   target is set for it: a payment is several PostgreSQL transactions whatever the design.
2. The p99 of a replayed request (the same key and bytes as a payment already finished: the stored
   201 comes back with `Idempotent-Replayed: true`) at half of saturation, per design: open-model (a
   constant arrival rate, each request timed from its intended send time, so a stall counts) at the
   rate at which the server is half busy (`httpload.calibrate_rate`, starting from half the replay
   throughput measured closed-loop; why that start is not itself the operating point:
   `httpload.BUSY_SHARE_NOTE`). Target: p99 at most 2 ms. Beside each such round, the same server's bare `GET /bench/bare` gets the same
   arrival rate from the same generator: its p99 is the floor this harness and machine put under
   any p99 (the generator's send lag, loopback, scheduling on a shared machine), so a p99 above
   the target can be told apart from one the harness could not have measured below it. One more
   replay round and floor round at lighter loads (`LIGHTER_LOADS`) show how much of the p99 is
   queueing.

As in `bench/tenancy.py`: each server is one uvicorn worker pinned to one core and the load
generator is pinned to the other; a tenant with a limit the benchmark never reaches keeps the rate
limiter deciding but never refusing. Design is a server setting, so three servers run side by side
(`none`, `redis`, `postgres`; one is measured at a time, the idle ones cost next to nothing), and
the throughput rounds come in adjacent ABBA pairs against the `none` server so background drift
hits both sides alike; the ratio is the median of the per-pair ratios. The CPU column is the same
comparison by the server's CPU time per request, less sensitive to other load on the machine.

Every request is checked twice: its status must be 201, and at the end each server's
`saaslab_idempotency_decisions_total` must count exactly the executions and replays sent, so a
benchmark that silently replayed (or executed) the wrong thing fails rather than reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from bench import httpload
from bench.tenancy import CONNECTIONS, _cpu_s, bench_services, scoped_tenant, start_server
from reference_impl.common.redis_client import make_redis
from saaslab.services import ServiceError
from saaslab.settings import Settings

BASELINE = "none"
DESIGNS = ("redis", "postgres")
PAIRS = 4
"""ABBA pairs of throughput rounds per design against `none`."""
REPLAY_PAIRS = 2
"""Closed-loop replay rounds per design (alternating designs) that measure saturation."""
OPEN_PAIRS = 5
"""Open-model replay rounds per design (alternating designs); the p99 is the median of them."""
OPEN_LOAD = 0.5
"""Half of saturation: the share of its core the server is kept busy under the open model (and the share of
the closed-loop throughput the calibration starts from)."""
LIGHTER_LOADS = (0.1, 0.25)
"""Lighter loads, as shares of busy (the half-busy rate scaled down), at which one more replay round (and its
floor) shows how the tail grows with load."""
TARGET_REPLAY_P99_MS = 2.0
WARM_S = 1.0
LIMITER_TIMEOUT_MS = 2000
BODY = b'{"amount":1999,"currency":"EUR"}'
KEY_DIGITS = 12
OK = 201


class FreshKeys:
    """Raw `POST /v1/payments` requests, each with an Idempotency-Key never sent before.

    The request is built once around a fixed-width placeholder and each call splices in the next
    counter value: varying the key costs one bytes join in the load loop, not a request build.
    `sent` counts the requests handed out (the executions the server must report).
    """

    def __init__(self, host: str, api_key: str, tag: str) -> None:
        marker = "#" * KEY_DIGITS
        raw = httpload.build_request("POST", "/v1/payments", host, _headers(api_key, f"bench-{tag}-{marker}"), BODY)
        self._head, self._tail = raw.split(marker.encode())
        self.sent = 0

    def __call__(self) -> bytes:
        self.sent += 1
        return b"%s%0*d%s" % (self._head, KEY_DIGITS, self.sent, self._tail)


def _headers(api_key: str, idempotency_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key}


def _check(result: httpload.LoadResult, what: str) -> None:
    if result.errors or set(result.status_counts) - {OK}:
        raise ServiceError(f"{what}: not every request was answered {OK}: {result.errors} errors, "
                           f"statuses {result.status_counts}")


async def _closed_loop(port: int, next_request: Callable[[], bytes], seconds: float) -> httpload.LoadResult:
    """`httpload.closed_loop`, asking `next_request` for each request's bytes (a fresh key each time)."""
    res = httpload.LoadResult(0, 0, seconds)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        conn = httpload._Conn("127.0.0.1", port)
        try:
            while (start := time.perf_counter()) < deadline:
                status = await conn.send(next_request())
                res.latency.record_s(time.perf_counter() - start)
                res.requests += 1
                httpload._count(res, status)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
    res.seconds = time.perf_counter() - t0
    return res


class Server:
    """One service process under one idempotency design, with its benchmark tenant and requests."""

    def __init__(self, settings: Settings, design: str, prefix: str, tag: str) -> None:
        self.design = design
        # A generous limiter timeout: a stall of the shared machine must not make the limiter fail
        # open (skipping Redis) on one side of a pair only.
        self.proc = start_server(settings, SAASLAB_IDEMPOTENCY=design, SAASLAB_REDIS_PREFIX=prefix,
                                 SAASLAB_RATELIMIT_MODE="enforce", SAASLAB_RATELIMIT_TIMEOUT_MS=str(LIMITER_TIMEOUT_MS))
        self.port = self.proc.port
        self.process = psutil.Process(self.proc.pid)
        self.base = self.proc.url
        try:
            self.api_key = scoped_tenant(self.base, f"bench-idempotency-{design}").api_key
        except BaseException:
            self.stop()
            raise
        self.fresh = FreshKeys(f"127.0.0.1:{self.port}", self.api_key, tag)
        self.replay = b""
        self.replays_sent = 0

    def seed_replay(self, tag: str) -> None:
        """Finish one payment, check that its retry is a byte-identical replay, keep the retry's bytes."""
        key = f"bench-{tag}-replay"
        headers = _headers(self.api_key, key)
        first = httpx.post(f"{self.base}/v1/payments", content=BODY, headers=headers)
        again = httpx.post(f"{self.base}/v1/payments", content=BODY, headers=headers)
        if first.status_code != OK or "idempotent-replayed" in first.headers:
            raise ServiceError(f"the {self.design} design did not execute the first payment: {first.status_code}")
        if (again.status_code, again.headers.get("idempotent-replayed"), again.content) != (OK, "true", first.content):
            raise ServiceError(f"the {self.design} design did not replay the payment: {again.status_code} "
                               f"{dict(again.headers)}")
        self.fresh.sent += 1  # the first payment is one more execution for the metrics check
        self.replays_sent += 1
        self.replay = httpload.build_request("POST", "/v1/payments", f"127.0.0.1:{self.port}", headers, BODY)

    def closed_round(self, next_request: Callable[[], bytes], seconds: float, *, replay: bool = False) -> dict:
        """One closed-loop round: throughput, latency, server CPU per request, the client's CPU share."""
        client = psutil.Process()
        server_cpu, client_cpu, started = _cpu_s(self.process), _cpu_s(client), time.perf_counter()
        result = httpload.run(_closed_loop(self.port, next_request, seconds))
        wall = time.perf_counter() - started
        _check(result, f"{self.design} {'replays' if replay else 'payments'}")
        if replay:
            self.replays_sent += result.requests
        return {"rps": result.rps, "p50_ms": result.latency.percentile_ms(50),
                "p99_ms": result.latency.percentile_ms(99),
                "server_cpu_us": 1e6 * (_cpu_s(self.process) - server_cpu) / max(result.requests, 1),
                "client_cpu_share": (_cpu_s(client) - client_cpu) / wall}

    def open_round(self, rate: float, seconds: float, *, bare: bool = False) -> dict:
        """One open-model round of replays, or (`bare`) of the bare route at the same rate: the floor."""
        server_cpu = _cpu_s(self.process)
        request = httpload.build_request("GET", "/bench/bare", f"127.0.0.1:{self.port}") if bare else self.replay
        o = httpload.run(httpload.open_loop("127.0.0.1", self.port, request, rate=rate, seconds=seconds))
        result = o.result
        if bare:
            if result.errors or set(result.status_counts) - {200}:
                raise ServiceError(f"{self.design} bare route: {result.errors} errors, statuses {result.status_counts}")
        else:
            _check(result, f"{self.design} open-model replays")
            self.replays_sent += result.requests
        return o.figures(_cpu_s(self.process) - server_cpu)

    def check_decisions(self) -> dict[str, float]:
        """The server's idempotency decisions must be exactly the executions and replays sent."""
        text = httpx.get(f"{self.base}/metrics").text
        decisions = {m[1]: float(m[2]) for m in re.finditer(
            r'^saaslab_idempotency_decisions_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}
        expected = {"execute": self.fresh.sent, "replay": self.replays_sent}
        if any(decisions.get(k, 0) != v for k, v in expected.items()) or any(
                v for k, v in decisions.items() if k not in expected):
            raise ServiceError(f"the {self.design} server's idempotency decisions {decisions} are not the "
                               f"requests sent {expected}")
        return decisions

    def stop(self) -> None:
        self.proc.stop()


def bench_throughput(none: Server, server: Server, seconds: float) -> dict:
    orders = [(none, server) if i % 2 == 0 else (server, none) for i in range(PAIRS)]
    pairs = [{s.design: s.closed_round(s.fresh, seconds) for s in order} for order in orders]
    d = server.design
    ratio = statistics.median(p[d]["rps"] / p[BASELINE]["rps"] for p in pairs)
    cpu_ratio = statistics.median(p[BASELINE]["server_cpu_us"] / p[d]["server_cpu_us"] for p in pairs)
    names = (BASELINE, d)
    return {"design": d, "ratio": ratio, "cpu_ratio": cpu_ratio,
            "rps": {n: statistics.median(p[n]["rps"] for p in pairs) for n in names},
            "p99_ms": {n: statistics.median(p[n]["p99_ms"] for p in pairs) for n in names},
            "server_cpu_us": {n: statistics.median(p[n]["server_cpu_us"] for p in pairs) for n in names},
            "client_cpu_share_max": max(p[n]["client_cpu_share"] for p in pairs for n in names),
            "pairs": pairs}


def bench_replay(servers: list[Server], seconds: float) -> dict[str, dict]:
    def orders(n: int) -> list[list[Server]]:
        return [servers if i % 2 == 0 else servers[::-1] for i in range(n)]

    closed: dict[str, list[dict]] = {s.design: [] for s in servers}
    for order in orders(REPLAY_PAIRS):
        for s in order:
            closed[s.design].append(s.closed_round(lambda s=s: s.replay, seconds, replay=True))
    saturation = {d: statistics.median(r["rps"] for r in rounds) for d, rounds in closed.items()}
    # Half of saturation: the rate at which the server is half busy replaying (httpload.BUSY_SHARE_NOTE).
    calibration = {s.design: httpload.calibrate_rate(lambda r, s=s: s.open_round(r, httpload.CALIBRATION_S),
                                                     OPEN_LOAD * saturation[s.design], OPEN_LOAD) for s in servers}
    opened: dict[str, list[dict]] = {s.design: [] for s in servers}
    floor: dict[str, list[dict]] = {s.design: [] for s in servers}
    for i, order in enumerate(orders(OPEN_PAIRS)):
        for s in order:
            # Replay and floor rounds adjacent, in alternating order, so drift hits both alike.
            for bare in ((False, True) if i % 2 == 0 else (True, False)):
                (floor if bare else opened)[s.design].append(
                    s.open_round(calibration[s.design].rate, seconds, bare=bare))
    rows = {}
    for d, rounds in opened.items():
        p99 = statistics.median(r["p99_ms"] for r in rounds)
        caveat, remark = httpload.tail_caveat([[r] for r in rounds], "rounds")
        rows[d] = {"saturation_rps": saturation[d], "rate": calibration[d].rate, "p99_ms": p99,
                   "calibration": calibration[d].rounds,
                   "p99_ms_max": max(r["p99_ms"] for r in rounds),
                   "floor_p99_ms": statistics.median(r["p99_ms"] for r in floor[d]),
                   "floor_p50_ms": statistics.median(r["p50_ms"] for r in floor[d]),
                   "p99_over_floor_ms": statistics.median(r["p99_ms"] - f["p99_ms"] for r, f in zip(rounds, floor[d], strict=True)),
                   "floor_rounds": floor[d],
                   "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
                   "server_cpu_us": statistics.median(r["server_cpu_us"] for r in closed[d]),
                   "open_server_cpu_us": statistics.median(r["server_cpu_us"] for r in rounds),
                   "busy_share": statistics.median(r["busy_share"] for r in rounds),
                   "send_lag_p99_ms_max": max(r["send_lag_p99_ms"] for r in rounds),
                   "dropped": sum(r["dropped"] for r in rounds), "caveat": caveat, "remark": remark,
                   "target_ms": TARGET_REPLAY_P99_MS, "meets_target": p99 <= TARGET_REPLAY_P99_MS and not caveat,
                   "closed_rounds": closed[d], "open_rounds": rounds}
    # How the tail grows with load: one replay round and one floor round per lighter share.
    for share in LIGHTER_LOADS:
        for s in servers:
            rate = calibration[s.design].rate * share / OPEN_LOAD
            replayed = s.open_round(rate, seconds)
            bare = s.open_round(rate, seconds, bare=True)
            rows[s.design].setdefault("by_load", {})[share] = {
                "rate": rate, "busy_share": replayed["busy_share"],
                "p50_ms": replayed["p50_ms"], "p99_ms": replayed["p99_ms"], "floor_p99_ms": bare["p99_ms"],
                "send_lag_p99_ms": max(replayed["send_lag_p99_ms"], bare["send_lag_p99_ms"])}
    return rows


async def _drop_keys(settings: Settings, prefix: str) -> None:
    redis = make_redis(settings)
    try:
        batch = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(batch), 1000):
            await redis.unlink(*batch[i:i + 1000])
    finally:
        await redis.aclose()


def _markdown(throughput: list[dict], replay: dict[str, dict], seconds: float, load: dict,
              stalls: httpload.KernelThreadRuns) -> list[str]:
    md = [f"`POST /v1/payments`, one worker per design pinned to one core, the load generator on the other, "
          f"{CONNECTIONS} keep-alive connections, a fresh Idempotency-Key per request (`none` gets one too); "
          f"{PAIRS} ABBA pairs of {seconds:g} s rounds against the `none` server, the ratio as the median of "
          f"per-pair ratios. CPU ratio: the same comparison by the server's CPU time per request. The issue sets "
          f"no throughput target.", "",
          "| design | none rps | design rps | ratio design/none | target | CPU/req none | CPU/req design "
          "| CPU ratio | client CPU (max) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in throughput:
        d = r["design"]
        md.append(f"| {d} | {r['rps'][BASELINE]:.0f} | {r['rps'][d]:.0f} | {r['ratio']:.2f}x | none set | "
                  f"{r['server_cpu_us'][BASELINE]:.0f} us | {r['server_cpu_us'][d]:.0f} us | {r['cpu_ratio']:.2f} | "
                  f"{100 * r['client_cpu_share_max']:.0f}% |")
    md += ["", f"Replays (same key and bytes as a finished payment, answered `Idempotent-Replayed: true`): "
               f"saturation closed-loop ({REPLAY_PAIRS} rounds per design, median), then open-model at half of "
               f"saturation, the rate at which the server is half busy ({OPEN_PAIRS} rounds per design, the p99 as "
               f"the median of rounds; latency from each request's intended send time). The last column is half "
               f"the closed-loop rate, the naive reading of half of saturation, as the first calibration round "
               f"measured it.", "",
           "| design | replay saturation (closed loop) | server CPU/replay (closed / open) | half of saturation "
           "| server busy | p50 | p99 | p99 (worst round) | floor p50 / p99 | p99 over floor | target | target met "
           "| at half the closed-loop rate: busy, p99 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d, r in replay.items():
        md.append(f"| {d} | {r['saturation_rps']:.0f} rps | {r['server_cpu_us']:.0f} / {r['open_server_cpu_us']:.0f} us "
                  f"| {r['rate']:.0f} rps | {100 * r['busy_share']:.0f}% | {r['p50_ms']:.2f} ms | "
                  f"{r['p99_ms']:.2f} ms | {r['p99_ms_max']:.2f} ms | "
                  f"{r['floor_p50_ms']:.2f} / {r['floor_p99_ms']:.2f} ms | {r['p99_over_floor_ms']:+.2f} ms | "
                  f"<= {TARGET_REPLAY_P99_MS:g} ms | "
                  f"{httpload.verdict(r['p99_ms'] <= TARGET_REPLAY_P99_MS, r['caveat'])} | "
                  f"{r['calibration'][0]['rate']:.0f} rps: "
                  f"{100 * r['calibration'][0]['busy_share']:.0f}%, {r['calibration'][0]['p99_ms']:.2f} ms |")
    for d, r in replay.items():
        if r["remark"]:
            md += ["", f"{d}: {r['remark']}."]
    md += ["", httpload.BUSY_SHARE_NOTE]
    md += ["", "The replay p99 at lighter loads (one round each, with its floor: the half-busy rate scaled to "
               "the share), against the half-saturation figures above:", "",
           "| design | " + " | ".join(f"{share:g} busy: rate (busy) / p50 / p99 / floor p99" for share in LIGHTER_LOADS)
           + " |", "| --- |" + " --- |" * len(LIGHTER_LOADS)]
    for d, r in replay.items():
        md.append(f"| {d} | " + " | ".join(
            f"{b['rate']:.0f} rps ({100 * b['busy_share']:.0f}%) / {b['p50_ms']:.2f} / {b['p99_ms']:.2f} / "
            f"{b['floor_p99_ms']:.2f} ms" for b in (r["by_load"][share] for share in LIGHTER_LOADS)) + " |")
    md += ["", f"The machine is shared: load average {load['before']:.2f} before and {load['after']:.2f} after the "
               f"run on {os.cpu_count()} cores, so figures are noisy. The generator's own send lag p99 was at most "
               f"{max(r['send_lag_p99_ms_max'] for r in replay.values()):.3f} ms. Floor: the same server's bare "
               f"`GET /bench/bare` at the same rate from the same generator, in adjacent rounds; a target below the "
               f"floor's p99 is below what this harness can measure on this machine."]
    md += ["", _stall_note(stalls, statistics.median(r["busy_share"] for r in replay.values()))]
    return md


def _stall_note(stalls: httpload.KernelThreadRuns, busy: float) -> str:
    """What the kernel threads that held a core during the replay rounds did to the tail.

    A stall of length T holds up the requests that arrive during it and those that arrive while the
    backlog it left drains, which at busy share b takes b x T / (1 - b): so a share of requests of
    (the share of time a core is stalled) / (1 - b), each by up to T.
    """
    threads = stalls.threads
    if not threads:
        return (f"No kernel thread held a core for {httpload.KERNEL_THREAD_MIN_RUN_MS:g} ms or more a time during "
                f"the replay rounds ({stalls.seconds:.0f} s).")
    stalled_s = sum(k.ran_ms for k in threads) / 1000
    held_up = stalled_s / stalls.seconds / max(1 - busy, 0.05)
    return (f"During the replay rounds ({stalls.seconds:.0f} s), kernel threads held a core: " + "; ".join(
        f"{k.name} {k.runs} times, {k.per_run_ms:.1f} ms a time (every {stalls.seconds / k.runs:.2f} s)"
        for k in threads) + f". The server and the generator have one core each, so such a stall holds up the "
        f"requests that arrive during it and while the backlog it leaves drains: at {100 * busy:.0f}% busy, about "
        f"{100 * held_up:.1f}% of requests (the share of time stalled / (1 - busy share)), each by up to the "
        f"stall's length. A p99 reads the slowest 1%, so it moves with these stalls, not with the code on the "
        f"request's path.")


def run(out: Path, *, seconds: float = 4.0) -> dict:
    tag = uuid.uuid4().hex[:8]
    prefix = f"bench-idem-{tag}"  # this run's Redis keys only, dropped at the end
    load_before = os.getloadavg()[0]
    with bench_services() as settings:
        servers: dict[str, Server] = {}
        try:
            for design in (BASELINE, *DESIGNS):
                servers[design] = Server(settings, design, prefix, tag)
            for s in servers.values():  # warm caches, pools and prepared statements
                s.closed_round(s.fresh, WARM_S)
            for d in DESIGNS:
                servers[d].seed_replay(tag)
                servers[d].closed_round(lambda s=servers[d]: s.replay, WARM_S, replay=True)
            # Replays first: after the throughput rounds' hundred thousand payments, PostgreSQL's
            # checkpointer and autovacuum catch up for a while on either core, and a replay round
            # run then measures that aftermath along with the replay.
            with httpload.watch_kernel_threads() as stalls:
                replay = bench_replay([servers[d] for d in DESIGNS], seconds)
            throughput = [bench_throughput(servers[BASELINE], servers[d], seconds) for d in DESIGNS]
            decisions = {d: s.check_decisions() for d, s in servers.items()}
        finally:
            for s in servers.values():
                s.stop()
            httpload.run(_drop_keys(settings, prefix))
    load = {"before": load_before, "after": os.getloadavg()[0]}
    md = _markdown(throughput, replay, seconds, load, stalls)
    result = {"benchmark": "idempotency", "seconds": seconds, "connections": CONNECTIONS, "throughput": throughput,
              "replay": replay, "decisions": decisions, "load_average": load, "markdown": md,
              "kernel_threads_during_replays": dataclasses.asdict(stalls),
              "machine_cpus": os.cpu_count()}
    (out / "idempotency.json").write_text(json.dumps(result, indent=2))
    return result
