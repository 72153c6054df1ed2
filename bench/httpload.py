"""A small, fast HTTP/1.1 load generator for benchmarks (keep-alive connections, asyncio + uvloop).

Locust is the lab's load tool for scenarios; a benchmark needs a client that is never the
bottleneck, so this one speaks just enough HTTP/1.1 over raw sockets: fixed request bytes, a
Content-Length-framed reader, one outstanding request per connection.

Two modes: `closed` (N connections as fast as they can: saturation throughput) and `open`
(a fixed arrival rate; each request timed from its intended send time, so a stall counts).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from saaslab import timerfd
from saaslab.results import LatencyHistogram


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    status_counts: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def build_request(method: str, path: str, host: str, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        assert self.reader is not None
        return await _read_response(self.reader)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _count(res: LoadResult, status: int) -> None:
    res.status_counts[status] = res.status_counts.get(status, 0) + 1
    if status >= 400:
        res.errors += 1


async def closed_loop(host: str, port: int, request: bytes, *, connections: int, seconds: float) -> LoadResult:
    """Saturation: `connections` clients each send the next request as soon as the last is answered."""
    res = LoadResult(0, 0, seconds)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        conn = _Conn(host, port)
        try:
            while (start := time.perf_counter()) < deadline:
                status = await conn.send(request)
                res.latency.record_s(time.perf_counter() - start)
                res.requests += 1
                _count(res, status)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    res.seconds = time.perf_counter() - t0
    return res


WARM_CONNECTIONS = 16
MAX_IN_FLIGHT = 256
DRAIN_TIMEOUT_S = 60.0
"""After the last send, how long the open model waits for the answers still outstanding."""


@dataclass
class OpenLoopResult:
    result: LoadResult
    send_lag: LatencyHistogram
    """How late the generator itself sent each request: its share of any p99."""
    dropped: int
    """Requests due while `max_in_flight` were outstanding (a stall), dropped rather than queued."""

    def figures(self, server_cpu_s: float) -> dict:
        """The round's figures, given the CPU time the server spent on it (CPU per request, busy share)."""
        latency, cpu_us = self.result.latency, 1e6 * server_cpu_s / max(self.result.requests, 1)
        return {"rps": self.result.rps, "dropped": self.dropped, "p50_ms": latency.percentile_ms(50),
                "p99_ms": latency.percentile_ms(99), "p999_ms": latency.percentile_ms(99.9),
                "send_lag_p99_ms": self.send_lag.percentile_ms(99), "server_cpu_us": cpu_us,
                "busy_share": busy_share(self.result.rps, cpu_us)}


class _OpenConn(asyncio.Protocol):
    """One keep-alive connection of the open-model generator, as a bare protocol.

    No stream reader and no task per request: a request is one `transport.write`, and its response is
    parsed in `data_received` and handed to `done` with the request's intended send time, so the
    generator's own CPU per request (which shows as its send lag) stays small at thousands of requests
    a second.
    """

    def __init__(self, done: Callable[[_OpenConn, int | None], None]) -> None:
        self._done = done
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.intended = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, intended: float) -> None:
        assert self.transport is not None
        self.intended, self.busy = intended, True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(buf[:end])
            length = 0
            at = head.lower().find(b"content-length:")
            if at >= 0:
                eol = head.find(b"\r\n", at)
                length = int(head[at + 15:eol if eol >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                return
            del buf[:end + 4 + length]
            self.busy = False
            self._done(self, int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self._done(self, None)


MAX_SEND_LAG_P99_MS = 0.5 if timerfd.AVAILABLE else 2.0
"""A generator send lag p99 beyond which a round's tail says more about the generator's core than the server:
the timerfd ticker sends within about 0.2 ms at p99 on a quiet core (the loop's millisecond timers, where
there is no timerfd, within about two ticks)."""


def busy_share(rps: float, server_cpu_us: float) -> float:
    """The share of its one core a server spent on a round: arrival rate x CPU time per request."""
    return rps * server_cpu_us / 1e6


def _flaw(r: dict) -> tuple[str, str] | None:
    """(label, reason) when a round's tail cannot be trusted, else None."""
    if r["dropped"]:  # a stall filled MAX_IN_FLIGHT: the round's tail went unmeasured
        return "stalled", "requests dropped"
    if r["send_lag_p99_ms"] > MAX_SEND_LAG_P99_MS:
        return "unreliable", "the load generator itself was late"
    return None


def tail_caveat(groups: list[list[dict]], unit: str) -> tuple[str, str]:
    """(caveat, remark) for a median taken over `groups` of open-model rounds (ABBA pairs, or rounds alone).

    A group is flawed when one of its rounds dropped requests or its generator was late
    (`MAX_SEND_LAG_P99_MS`): a stall of the whole machine shows as both. A median of n values is
    decided by the others while at most (n - 1) // 2 of them are flawed; the caveat (which makes a
    target unjudged) is set only beyond that, and the remark says how many were outvoted.
    """
    flaws = [f for g in groups if (f := next((x for r in g if (x := _flaw(r))), None))]
    if not flaws:
        return "", ""
    (label, reason), n, of = flaws[0], len(flaws), f"of {len(groups)} {unit}"
    if n > (len(groups) - 1) // 2:
        return f"{label}: {reason} in {n} {of}", ""
    return "", f"in {n} {of} {reason} (the median of {len(groups)} outvotes {'it' if n == 1 else 'them'})"


def verdict(within: bool, caveat: str) -> str:
    """A latency target's verdict: a round whose tail went unmeasured (`caveat`) cannot meet it."""
    if within and caveat:
        return f"not judged ({caveat})"
    return ("yes" if within else "no") + (f" ({caveat})" if caveat else "")


CALIBRATION_ROUNDS = 4
CALIBRATION_S = 2.0


@dataclass
class Calibration:
    """The open-model rate at which a server is `share` busy, and the rounds that found it."""

    share: float
    rate: float
    rounds: list[dict]
    """Every round run, the first at the starting rate (a share of closed-loop saturation)."""


def calibrate_rate(open_round: Callable[[float], dict], first_rate: float, share: float) -> Calibration:
    """The arrival rate at which the server is `share` busy under the open model.

    Busy share is rate x CPU time per request, and a server's CPU per request grows as its load falls
    (fewer requests share each wake-up, down to none), so the rate is searched for in short rounds,
    starting at `first_rate` (a share of closed-loop saturation): a proportional step first (rate x
    share / busy share), which a rising CPU per request keeps on the busy side; then a secant through
    the last two rounds, leaving out the first, which sits where batching flattens busy share and would
    tilt the line; once rounds lie on both sides of `share`, interpolation between the closest two. A
    2 s round's CPU per request is good to about 10%, so every step is kept within a factor of two.
    `open_round(rate)` runs one round and returns at least `busy_share`; the rounds are kept, the first
    being the starting rate's.
    """
    rate, rounds = first_rate, []
    above: tuple[float, float] | None = None  # (rate, busy share) of the lowest-rate round busier than `share`
    below: tuple[float, float] | None = None  # and of the highest-rate round less busy
    for _ in range(CALIBRATION_ROUNDS):
        r = open_round(rate)
        rounds.append({"rate": rate, **r})
        u = r["busy_share"]
        if u > share and (above is None or rate < above[0]):
            above = (rate, u)
        elif u <= share and (below is None or rate > below[0]):
            below = (rate, u)
        step = rate * share / u
        if above is not None and below is not None:
            step = (below[0] + (share - below[1]) * (above[0] - below[0]) / (above[1] - below[1])
                    if below[0] < above[0] else (below[0] * above[0]) ** 0.5)  # noise crossed them: split the difference
        elif len(rounds) >= 3:
            (r0, u0), (r1, u1) = ((x["rate"], x["busy_share"]) for x in rounds[-2:])
            if r0 != r1 and (slope := (u1 - u0) / (r1 - r0)) > 0:
                step = r1 + (share - u1) / slope
        rate = min(max(step, rate / 2), rate * 2)
    return Calibration(share, rate, rounds)


BUSY_SHARE_NOTE = (
    "Server busy: the open-model rate times the server's CPU time per request in those rounds, the share of its "
    "core it spent. Half of saturation is the rate at which the server is half busy, found by "
    f"`httpload.calibrate_rate` ({CALIBRATION_ROUNDS} open-model rounds of {CALIBRATION_S:g} s: a proportional step, "
    "rate x 0.5 / busy share, then secant steps, then interpolation once rounds lie on both sides of half busy), "
    "starting from half of the closed-loop saturation. "
    "That starting rate is not the operating point: closed-loop, the requests in flight share each wake-up of "
    "the event loop (one read of many sockets, one pipelined Redis write), while arriving one at a time each pays "
    "for its own wake-ups, system calls and cold caches, so at half the closed-loop rate a server is most of the "
    "way to saturated (the first calibration round, reported beside the result) and a stall of the shared machine "
    "takes many times its own length to drain.")


@dataclass
class CoreStalls:
    """One core's share of `probe_stalls`: how often a sleeper pinned to it woke late."""

    cpu: int | None
    """None where threads cannot be pinned: the sleeper ran wherever the scheduler put it."""
    sleeps: int
    stalls: int
    worst_ms: float


@dataclass
class KernelThread:
    """A kernel thread's runs on a core and their total length (/proc/<pid>/schedstat): since it started,
    or over a watched stretch (`watch_kernel_threads`)."""

    name: str
    runs: int
    ran_ms: float

    @property
    def per_run_ms(self) -> float:
        return self.ran_ms / max(self.runs, 1)


@dataclass
class MachineStalls:
    """How often the machine kept a sleeping process from waking on time (`probe_stalls`), per core,
    and the kernel threads that took a core meanwhile."""

    seconds: float
    over_ms: float
    cores: list[CoreStalls]
    kernel_threads: list[KernelThread]

    @property
    def stalls(self) -> int:
        return sum(c.stalls for c in self.cores)

    @property
    def worst_ms(self) -> float:
        return max((c.worst_ms for c in self.cores), default=0.0)

    def sentence(self) -> str:
        where = ", ".join(f"{c.stalls} times" + ("" if c.cpu is None else f" on core {c.cpu}") for c in self.cores)
        text = (f"Before the run, a sleeper on each core, waking every {PROBE_SLEEP_S * 1000:g} ms, woke more than "
                f"{self.over_ms:g} ms late {where}, in {self.seconds:g} s (the worst {self.worst_ms:.1f} ms late).")
        if self.kernel_threads:
            text += " Kernel threads that held a core meanwhile: " + "; ".join(
                f"{k.name} {k.runs} times, {k.per_run_ms:.1f} ms a time" for k in self.kernel_threads) + "."
        return text + (" The benchmark's servers and generator meet these stalls too, and no server-side change "
                       "removes them.")


PROBE_SLEEP_S = 0.001
KERNEL_THREAD_MIN_RUN_MS = 0.5
"""A kernel thread is named in the probe's report when its runs average at least this long: shorter ones
(interrupt work, RCU) cannot delay a request by a measurable share of a millisecond target."""


def probe_stalls(seconds: float = 5.0, over_ms: float = 1.0) -> MachineStalls:
    """On every core at once, sleep `PROBE_SLEEP_S` at a time for `seconds`, counting the wake-ups
    more than `over_ms` late; and name the kernel threads that ran meanwhile for `KERNEL_THREAD_MIN_RUN_MS`
    or more a time.

    A shared or virtual machine sometimes takes a core away for milliseconds: the hypervisor, or a
    kernel thread that does not yield (on the machine this lab was built on, `kdamond.0`, the kernel's
    memory-access monitor, held one core for about 2.2 ms every 512 ms). One sleeper per core sees
    each such stall; a single unpinned sleeper would just wake on the other core. This tells how
    often it happens on the machine the figures come from, so a noisy p99 can be read against it.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    results: list[CoreStalls] = []

    def sleeper(cpu: int | None) -> None:
        if cpu is not None:
            os.sched_setaffinity(threading.get_native_id(), {cpu})
        stalls, worst, sleeps = 0, 0.0, 0
        end = time.perf_counter() + seconds
        while (start := time.perf_counter()) < end:
            time.sleep(PROBE_SLEEP_S)
            late_ms = (time.perf_counter() - start - PROBE_SLEEP_S) * 1000
            sleeps += 1
            worst = max(worst, late_ms)
            stalls += late_ms > over_ms
        results.append(CoreStalls(cpu, sleeps, stalls, worst))

    threads = [threading.Thread(target=sleeper, args=(cpu,)) for cpu in (cpus if len(cpus) > 1 else [None])]
    with watch_kernel_threads() as ran:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return MachineStalls(seconds, over_ms, sorted(results, key=lambda c: -1 if c.cpu is None else c.cpu), ran.threads)


@dataclass
class KernelThreadRuns:
    """The kernel threads that ran `KERNEL_THREAD_MIN_RUN_MS` or more a time over `seconds` (`watch_kernel_threads`)."""

    seconds: float
    threads: list[KernelThread]


@contextmanager
def watch_kernel_threads() -> Iterator[KernelThreadRuns]:
    """Over the block, the kernel threads that held a core `KERNEL_THREAD_MIN_RUN_MS` or more a time
    on average, the busiest first (filled in when the block ends)."""
    before, started = kernel_threads(), time.perf_counter()
    watched = KernelThreadRuns(0.0, [])
    yield watched
    ran = [KernelThread(k.name, k.runs - before[pid].runs, k.ran_ms - before[pid].ran_ms)
           for pid, k in kernel_threads().items() if pid in before and k.runs > before[pid].runs]
    watched.seconds = time.perf_counter() - started
    watched.threads = sorted((k for k in ran if k.per_run_ms >= KERNEL_THREAD_MIN_RUN_MS), key=lambda k: -k.ran_ms)


def kernel_threads() -> dict[int, KernelThread]:
    """pid -> every kernel thread's runs and run time since it started, from /proc (empty where there is
    none). Kernel threads are kthreadd (pid 2) and its children."""
    threads = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text()
            name = fields[fields.index("(") + 1:fields.rindex(")")]
            ppid = int(fields[fields.rindex(")") + 2:].split()[1])
            pid = int(stat.parent.name)
            if pid != 2 and ppid != 2:
                continue
            run_ns, _wait_ns, runs = (int(x) for x in (stat.parent / "schedstat").read_text().split())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel without schedstat
        threads[pid] = KernelThread(name, runs, run_ns / 1e6)
    return threads


class _Ticker:
    """Waits until a `time.perf_counter()` instant: on a timerfd (`saaslab.timerfd`) where there is one,
    else with `asyncio.sleep` (whole milliseconds)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = timerfd.open_timer()
        self._waiter: asyncio.Future[None] | None = None
        if self._timer is not None:
            loop.add_reader(self._timer.fileno(), self._fired)

    @property
    def precise(self) -> bool:
        return self._timer is not None

    def _fired(self) -> None:
        if self._timer is not None and self._timer.consume() and self._waiter is not None \
                and not self._waiter.done():
            self._waiter.set_result(None)

    async def until(self, instant: float) -> None:
        delay = instant - time.perf_counter()
        if delay <= 0:
            return
        if self._timer is None:
            await asyncio.sleep(delay)
            return
        self._waiter = self._loop.create_future()
        self._timer.arm_at(instant)
        await self._waiter

    def close(self) -> None:
        if self._timer is not None:
            self._loop.remove_reader(self._timer.fileno())
            self._timer.close()
            self._timer = None


async def open_loop(host: str, port: int, request: bytes, *, rate: float, seconds: float,
                    max_in_flight: int = MAX_IN_FLIGHT, warm_connections: int = WARM_CONNECTIONS) -> OpenLoopResult:
    """A fixed arrival rate; latency from each request's intended send time (no coordinated omission).

    Sends are timed by `_Ticker` (a timerfd on Linux: the event loop's own timers tick in whole
    milliseconds, which would put up to a millisecond of the generator's lag into every latency).
    Any lag left is counted in the latency, alike for every server measured, and the lag's own
    histogram says how much of a p99 is the generator's. (Spinning to the exact time instead takes a
    whole core from the servers and makes them, not the generator, late.) Connections are
    opened before the clock starts (`_OpenConn`: a write per request, responses parsed in the
    protocol, no task per request). A request due while `max_in_flight` are outstanding is dropped
    and counted apart, not queued: waiting would hide the stall.
    """
    loop = asyncio.get_running_loop()
    res = LoadResult(0, 0, seconds)
    lag = LatencyHistogram()
    idle: list[_OpenConn] = []
    every: list[_OpenConn] = []
    in_flight = dropped = 0
    all_sent = False
    finished = loop.create_future()

    def done(conn: _OpenConn, status: int | None) -> None:
        nonlocal in_flight
        in_flight -= 1
        if status is None:  # the connection died under the request
            res.errors += 1
        else:
            res.latency.record_s(time.perf_counter() - conn.intended)
            res.requests += 1
            _count(res, status)
            idle.append(conn)
        if all_sent and in_flight == 0 and not finished.done():
            finished.set_result(None)

    async def connect() -> _OpenConn:
        _, conn = await loop.create_connection(lambda: _OpenConn(done), host, port)
        every.append(conn)
        return conn

    async def send_on_new(intended: float) -> None:
        nonlocal in_flight
        try:
            conn = await connect()
        except OSError:
            in_flight -= 1
            res.errors += 1
            return
        conn.send(request, intended)

    for _ in range(warm_connections):
        idle.append(await connect())
    pending: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate
    ticker = _Ticker(loop)
    # What the generator has accumulated so far (earlier rounds' results) is frozen out of the
    # collector's scans, so a full collection cannot pause the sends of this round.
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter() + 0.01
        for i in range(int(rate * seconds)):
            intended = t0 + i * interval
            await ticker.until(intended)
            lag.record_s(time.perf_counter() - intended)
            if in_flight >= max_in_flight:
                dropped += 1
                continue
            in_flight += 1
            while idle and idle[-1].transport is None:  # closed while idle
                idle.pop()
            if idle:
                idle.pop().send(request, intended)
            else:
                task = asyncio.ensure_future(send_on_new(intended))
                pending.add(task)
                task.add_done_callback(pending.discard)
        all_sent = True
        if in_flight:
            try:
                await asyncio.wait_for(finished, DRAIN_TIMEOUT_S)
            except TimeoutError:  # answers that never came are errors, not waits without end
                res.errors += in_flight
        for conn in every:
            if conn.transport is not None:
                conn.transport.close()
        res.seconds = time.perf_counter() - t0
    finally:
        ticker.close()
        gc.unfreeze()
    return OpenLoopResult(res, lag, dropped)


def run(coro):  # noqa: ANN001, ANN201 - thin wrapper choosing the fastest loop available
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
