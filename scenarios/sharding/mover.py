"""One tenant moved online from shard 0 to shard 1 while service workers write to it and a reader reads its
latest acknowledged write: the move is reference_impl/sharding/core.py's step machine (`start_move`, `advance`)
driven against two simulated shards and a control database with latencies, and the run's history and final
state are judged by reference_impl/sharding/invariants.py's `check`, the checker of the live run.

What each step costs and does (times from `Setup`):

* copy: the source's rows as of the step's start (the tenant's pre-existing rows plus the keys written so far),
  in batches of `copy_batch_rows`, a round trip each plus `copy_row_us` per row. Change capture on the source
  starts with it: every later write to the source is captured.
* catch_up (rounds) and final_catch_up: the captured changes not yet applied, a round trip plus `apply_us`
  each; they land on the target when the round ends.
* fence (fenced mover only): a round trip to the source, after which it refuses the tenant's writes; a worker
  refused drops its cached placement and retries `retry_ms` later against the directory.
* flip: a round trip to the control database: the directory names the target (epoch + 1). Under the fenced
  mover the source now refuses the tenant's reads too (it no longer owns it).
* clean: the tenant's rows on the source as the step starts are deleted, `delete_row_us` each.

Workers keep their placement in the service's `RoutingCache` and re-read it from the directory after
`cache_ttl_ms`. Pre-existing rows are counted (`source_rows`, `target_rows` of the move), not named; the
checker sees the keys written during the run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from reference_impl.sharding.core import (
    Move,
    MoveState,
    Placement,
    RoutingCache,
    advance,
    make_router,
    start_move,
)
from reference_impl.sharding.invariants import ShardWorld, check
from saaslab.history import CheckResult, History
from saaslab.results import LatencyHistogram
from scenarios.kernel import US_PER_MS
from scenarios.sharding.plan import SETUP, Setup

TENANT = "t-moving"
SOURCE, TARGET = 0, 1


@dataclass
class Worker:
    """A service worker: its routing cache, and when it last read the directory."""

    name: str
    cache: RoutingCache = field(default_factory=RoutingCache)
    read_at_us: int = 0


@dataclass
class MoveResult:
    mover: str
    rows: int
    write_rate: float
    seed: int
    state: MoveState
    history: History
    world: ShardWorld
    checks: list[CheckResult]
    write_latency: LatencyHistogram
    writes: int
    refusals: int
    copy_us: int

    @property
    def valid(self) -> bool:
        return all(c.valid for c in self.checks)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def acknowledged(self) -> set[str]:
        return {op.value["key"] for op in self.history.ops if op.f == "write" and op.type == "ok"}

    def lost(self) -> int:
        """Acknowledged writes on no shard at the end."""
        present = self.world.where()
        return sum(1 for k in self.acknowledged() if k not in present)

    def misplaced(self) -> int:
        """Rows of the tenant on a shard the directory does not name."""
        owner = self.world.directory[TENANT]
        return sum(len(keys) for shard, tenants in self.world.shards.items() if shard != owner
                   for keys in tenants.values())

    def values(self) -> list[tuple[str, float, str]]:
        s = self.state
        acked = len(self.acknowledged())
        failed = sum(1 for op in self.history.ops if op.f == "write" and op.type == "fail")
        moved = next((op.value.get("target_rows") for op in self.history.ops if op.f == "move" and op.type == "ok"),
                     None)
        out: list[tuple[str, float, str]] = [
            ("move_duration_ms", ((s.finished_us or s.started_us) - s.started_us) / US_PER_MS, "ms"),
            ("copy_ms", self.copy_us / US_PER_MS, "ms"),
            ("catch_up_rounds", float(s.rounds), "rounds"),
            ("write_blocked_ms", s.write_blocked_us / US_PER_MS, "ms"),
            ("moved_rows", float("nan") if moved is None else float(moved), "rows"),
            ("writes", float(self.writes), "writes"),
            ("acknowledged_writes", float(acked), "writes"),
            ("failed_writes", float(failed), "writes"),
            ("writes_refused", float(self.refusals), "requests"),
            ("write_latency_p50", self.write_latency.percentile_ms(50), "ms"),
            ("write_latency_p99", self.write_latency.percentile_ms(99), "ms"),
            ("write_latency_max", self.write_latency.percentile_ms(100), "ms"),
            ("lost_writes", float(self.lost()), "writes"),
            ("misplaced_rows", float(self.misplaced()), "rows"),
            ("stale_reads", float(self.check("read_your_writes").violations), "reads"),
        ]
        out += [(c.name, float(c.valid), "bool") for c in self.checks]
        out.append(("checks_valid", float(self.valid), "bool"))
        return out


class MoveLab:
    """The move of `TENANT` with `rows` pre-existing rows under `write_rate` writes per second (module docstring)."""

    def __init__(self, mover: str, rows: int, write_rate: float, seed: int, setup: Setup = SETUP) -> None:
        self.mover, self.rows, self.write_rate, self.seed, self.setup = mover, rows, write_rate, seed, setup
        self.env = simpy.Environment()
        self.history = History(process="sim")
        self.router = make_router("directory", [SOURCE, TARGET]).with_placement(TENANT, SOURCE)
        self.keys: dict[int, Counter[str]] = {SOURCE: Counter(), TARGET: Counter()}
        """Per shard, the rows written during the run (a key twice if its row is there twice)."""
        self.base = {SOURCE: rows, TARGET: 0}
        """Per shard, the tenant's pre-existing rows there (counted, not named)."""
        self.fence: dict[int, str] = {}
        """shard -> 'writes' (refuses the tenant's writes) or 'moved' (refuses its reads and writes)."""
        self.capture: list[str] | None = None
        self.applied = 0
        self.latest_acked: str | None = None
        self.stopped = False
        self.state: MoveState | None = None
        self.write_latency = LatencyHistogram()
        self.writes = 0
        self.refusals = 0
        self.copy_us = 0
        self.counts: tuple[int, int] | None = None
        us = lambda ms: round(ms * US_PER_MS)  # noqa: E731
        self.rtt, self.half, self.stmt = us(setup.rtt_ms), us(setup.rtt_ms / 2), us(setup.write_ms)
        self.retry, self.timeout, self.ttl = us(setup.retry_ms), us(setup.request_timeout_ms), us(setup.cache_ttl_ms)

    # -- the shards as the workers see them ---------------------------------------------------------

    def refuses(self, shard: int, op: str) -> bool:
        fence = self.fence.get(shard)
        return fence == "moved" or (fence == "writes" and op == "write")

    def placement(self, worker: Worker) -> Generator[simpy.Event, Any, Placement]:
        now = int(self.env.now)
        cached = worker.cache.get(TENANT)
        if cached is not None and now - worker.read_at_us < self.ttl:
            return cached
        worker.cache.invalidate(TENANT)
        yield self.env.timeout(self.half)  # the directory, in the control database
        found = self.router.placement(TENANT)
        yield self.env.timeout(self.half)
        worker.read_at_us = int(self.env.now)
        return worker.cache.put(TENANT, found)

    def write(self, worker: Worker, key: str) -> Generator[simpy.Event, Any, None]:
        env = self.env
        start = int(env.now)
        inv = self.history.invoke("write", {"tenant": TENANT, "key": key}, process=worker.name, time_us=start)
        self.writes += 1
        while True:
            p = yield from self.placement(worker)
            yield env.timeout(self.half + self.stmt)
            if not self.refuses(p.shard, "write"):
                self.keys[p.shard][key] += 1
                if p.shard == SOURCE and self.capture is not None:
                    self.capture.append(key)
                yield env.timeout(self.half)
                self.history.complete(inv, "ok", {"shard": p.shard, "epoch": p.epoch}, time_us=int(env.now))
                self.write_latency.record_us(int(env.now) - start)
                self.latest_acked = key
                return
            self.refusals += 1
            yield env.timeout(self.half)
            worker.cache.invalidate(TENANT)
            if env.now - start >= self.timeout:
                self.history.complete(inv, "fail", {"status": 503}, time_us=int(env.now))
                return
            yield env.timeout(self.retry)

    def read(self, worker: Worker, key: str) -> Generator[simpy.Event, Any, None]:
        env = self.env
        start = int(env.now)
        inv = self.history.invoke("read", {"tenant": TENANT, "key": key}, process=worker.name, time_us=start)
        while True:
            p = yield from self.placement(worker)
            yield env.timeout(self.half + self.stmt)
            if not self.refuses(p.shard, "read"):
                found = self.keys[p.shard][key] > 0
                yield env.timeout(self.half)
                self.history.complete(inv, "ok", {"found": found, "shard": p.shard, "epoch": p.epoch},
                                      time_us=int(env.now))
                return
            yield env.timeout(self.half)
            worker.cache.invalidate(TENANT)
            if env.now - start >= self.timeout:
                self.history.complete(inv, "fail", {"status": 503}, time_us=int(env.now))
                return
            yield env.timeout(self.retry)

    # -- load ---------------------------------------------------------------------------------------

    def writer(self, worker: Worker, index: int, rate: float) -> Generator[simpy.Event, Any, None]:
        rng = np.random.default_rng([self.seed, self.rows, round(self.write_rate * 1000), index])
        n = 0
        while True:
            yield self.env.timeout(max(1, round(rng.exponential(1e6 / rate))))
            if self.stopped:
                return
            self.env.process(self.write(worker, f"{worker.name}-{n}"))
            n += 1

    def reader(self, worker: Worker) -> Generator[simpy.Event, Any, None]:
        rng = np.random.default_rng([self.seed, self.rows, round(self.write_rate * 1000), self.setup.writers])
        while True:
            yield self.env.timeout(max(1, round(rng.exponential(1e6 / self.setup.read_rate))))
            if self.stopped:
                return
            if self.latest_acked is not None:
                self.env.process(self.read(worker, self.latest_acked))

    # -- the move -----------------------------------------------------------------------------------

    def total(self, shard: int) -> int:
        return self.base[shard] + sum(self.keys[shard].values())

    def perform(self, step: str) -> Generator[simpy.Event, Any, int]:
        """Do one step of the move; returns the rows it copied or changes it applied."""
        env, s = self.env, self.setup
        if step == "copy":
            self.capture = []
            snapshot, base = Counter(self.keys[SOURCE]), self.base[SOURCE]
            rows = base + sum(snapshot.values())
            yield env.timeout(math.ceil(rows / s.copy_batch_rows) * self.rtt + round(rows * s.copy_row_us))
            self.base[TARGET] = base
            self.keys[TARGET].update(snapshot)
            self.copy_us = int(env.now) - (self.state.started_us if self.state else 0)
            return rows
        if step in ("catch_up", "final_catch_up"):
            assert self.capture is not None
            pending, self.applied = self.capture[self.applied:], len(self.capture)
            yield env.timeout(self.rtt + round(len(pending) * s.apply_us))
            self.keys[TARGET].update(pending)
            if step == "final_catch_up":
                self.counts = (self.total(SOURCE), self.total(TARGET))
            return len(pending)
        if step == "fence":
            yield env.timeout(self.rtt)
            self.fence[SOURCE] = "writes"
            return 0
        if step == "flip":
            yield env.timeout(self.rtt)
            if self.counts is None:  # the unsafe mover: no final catch-up, so the counts are the flip's
                self.counts = (self.total(SOURCE), self.total(TARGET))
            self.router = self.router.with_placement(TENANT, TARGET)
            if SOURCE in self.fence:
                self.fence[SOURCE] = "moved"
            return 0
        if step == "clean":
            doomed, base = Counter(self.keys[SOURCE]), self.base[SOURCE]
            yield env.timeout(self.rtt + round((base + sum(doomed.values())) * s.delete_row_us))
            self.keys[SOURCE] -= doomed
            self.base[SOURCE] = 0
            return 0
        raise ValueError(f"no such step {step!r}")

    def move(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        yield env.timeout(round(self.setup.warmup_ms * US_PER_MS))
        now = int(env.now)
        state = start_move(Move(TENANT, SOURCE, TARGET, rows=self.rows), mover=self.mover,  # type: ignore[arg-type]
                           current_epoch=self.router.placement(TENANT).epoch, now_us=now, policy=self.setup.policy())
        self.state = state
        inv = self.history.invoke("move", {"tenant": TENANT, "source": SOURCE, "target": TARGET}, process="mover",
                                  time_us=now)
        while not state.finished:
            done = yield from self.perform(state.step)
            state = self.state = advance(state, int(env.now), done)
        source_rows, target_rows = self.counts or (None, None)
        self.history.complete(inv, "ok", {"source_rows": source_rows, "target_rows": target_rows,
                                          "epoch": state.epoch}, time_us=int(env.now))
        yield env.timeout(round(self.setup.settle_ms * US_PER_MS))
        self.stopped = True

    def run(self) -> MoveResult:
        workers = [Worker(f"worker-{i}") for i in range(self.setup.writers)]
        for i, w in enumerate(workers):
            self.env.process(self.writer(w, i, self.write_rate / len(workers)))
        self.env.process(self.reader(Worker("reader")))
        self.env.process(self.move())
        self.env.run()
        world = ShardWorld(
            shards={str(shard): {TENANT: list(keys.elements())} for shard, keys in self.keys.items()},
            directory={TENANT: str(self.router.shard_for(TENANT))})
        assert self.state is not None
        return MoveResult(self.mover, self.rows, self.write_rate, self.seed, self.state, self.history, world,
                          check(self.history.ops, world), self.write_latency, self.writes, self.refusals,
                          self.copy_us)


def simulate_move(mover: str, rows: int, write_rate: float, seed: int, setup: Setup = SETUP) -> MoveResult:
    return MoveLab(mover, rows, write_rate, seed, setup).run()
