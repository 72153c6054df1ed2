"""A failover drill, Jepsen's way: write uniquely identified rows, strike, heal, read back, count.

`pg_drill` starts a primary and its replicas (in network namespaces when the machine allows), the
failover manager, writers on the majority's side through a `PrimaryPool` (each writer reads some of
its own acknowledged writes back: the read-your-writes probe) and, for a partition, one writer on the
primary's own side of it. After `warmup_s` the nemesis strikes the primary (`kill`: SIGKILL;
`pause`: SIGSTOP, SIGCONT `hold_s` later, with one writer pinned to the old primary; `partition`: the
primary's host cut off, its agent cut off from the lease, both healed `hold_s` later); the writers go on for `settle_s`, then stop; the old
primary rejoins (by itself, or for the unsafe design by the drill acting as the operator); every id
is read back from the surviving primary and the checker runs
(reference_impl/failover/invariants.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from reference_impl.failover import core, invariants, network
from reference_impl.failover.lease import LeaseStore
from reference_impl.failover.manager import Manager, now_us
from reference_impl.failover.pgcluster import TABLE, Cluster, Node
from reference_impl.failover.pool import PrimaryPool, PrimaryUnavailable, WriteUnknown
from saaslab.history import History
from saaslab.results import Row

FAULTS = ("kill", "pause", "partition")
DESIGN_POLICY = {"async": (False, True), "sync": (True, True), "unsafe": (False, False)}
"""design -> (synchronous replication, fencing)."""


@dataclass
class DrillResult:
    component: str
    design: str
    fault: str
    seed: int
    verdict: invariants.Verdict
    history: list[Any]
    failover_s: float | None
    """Fault to the new primary's promotion (PostgreSQL) or Sentinel's switch (Redis)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    new_primary: str | None = None
    fault_us: int | None = None
    """When the nemesis struck (the history's clock, µs)."""

    def summary(self) -> dict[str, Any]:
        u = self.verdict.unavailability
        return {"component": self.component, "design": self.design, "fault": self.fault, "seed": self.seed,
                "count": self.verdict.count.to_dict(), "jepsen": self.verdict.count.line(),
                "split_brain_writes": self.verdict.split_brain, "failover_s": self.failover_s,
                "unavailability_s": None if u.window_us is None else u.window_us / 1e6,
                "longest_ack_gap_s": u.longest_gap_us / 1e6, "new_primary": self.new_primary,
                "checks": {c.name: c.valid for c in self.verdict.checks}, "events": self.events}


class Writers:
    """`n` writer tasks on this event loop; ids are `<tag>-<writer>-<seq>`."""

    def __init__(self, pool: PrimaryPool, history: History, tag: str, n: int, *, probe_every: int = 5) -> None:
        self.pool, self.history, self.tag, self.n, self.probe_every = pool, history, tag, n, probe_every
        self.stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._writer(i) for i in range(self.n)))
        await self.pool.close()

    async def _writer(self, i: int) -> None:
        seq = 0
        process = f"{self.tag}{i}"
        while not self.stop.is_set():
            seq += 1
            wid = f"{self.tag}-{i}-{seq}"
            op = self.history.invoke("write", {"id": wid}, process=process)
            try:
                rows, server = await self.pool.fetch(
                    f"INSERT INTO {TABLE} (id) VALUES ($1) RETURNING current_setting('cluster_name') AS s", wid)
                self.history.complete(op, "ok", {"server": rows[0]["s"] if rows else server})
            except PrimaryUnavailable as err:
                self.history.complete(op, "info" if isinstance(err, WriteUnknown) else "fail", {"error": str(err)})
                await asyncio.sleep(0.05)
                continue
            except Exception as err:  # whatever it was, the outcome is unknown and the writer goes on
                self.pool.drop()
                self.history.complete(op, "info", {"error": repr(err)[:200]})
                await asyncio.sleep(0.05)
                continue
            if seq % self.probe_every == 0:
                await self._probe(process, wid)

    async def _probe(self, process: str, wid: str) -> None:
        op = self.history.invoke("read", {"id": wid}, process=process)
        try:
            rows, server = await self.pool.fetch(f"SELECT 1 FROM {TABLE} WHERE id = $1", wid, write=False)
            self.history.complete(op, "ok", {"found": bool(rows), "server": server})
        except PrimaryUnavailable as err:
            self.history.complete(op, "fail", {"error": str(err)})


def _members(nodes: dict[str, Node]) -> dict[str, dict[str, Any]]:
    return {n: {"host": node.address, "port": node.port, "user": "postgres", "database": "postgres"}
            for n, node in nodes.items()}


def _minority_thread(host: network.Host, nodes: dict[str, Node], history: History,
                     stop: threading.Event) -> threading.Thread:
    """A writer on the primary's own host: from inside its namespace, it stays with it when cut off."""

    def main() -> None:
        with network.inside(host):
            async def go() -> None:
                writers = Writers(PrimaryPool(_members(nodes), timeout_s=0.5), history, "m", 1)
                task = asyncio.create_task(writers.run())
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                writers.stop.set()
                await task
            asyncio.run(go())

    t = threading.Thread(target=main, name="minority-writer", daemon=True)
    t.start()
    return t


async def pg_drill(root: Path, redis_url: str, *, design: str, fault: str, seed: int = 0, replicas: int = 1,
                   timers: core.Timers = core.PRESETS["lab"], sync_commit: str = "on", writers: int = 4,
                   warmup_s: float = 1.5, hold_s: float | None = None, settle_s: float = 1.5,
                   use_network: bool | None = None, max_lag_bytes: int | None = 1024 * 1024) -> DrillResult:
    """One PostgreSQL drill; every server, namespace and Redis key it made is gone when it returns."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose one of: {', '.join(FAULTS)}")
    if design not in DESIGN_POLICY:
        raise ValueError(f"unknown design {design!r}; choose one of: {', '.join(DESIGN_POLICY)}")
    sync, fencing = DESIGN_POLICY[design]
    reason = network.available()
    if fault == "partition" and reason:
        raise network.NetworkError(reason)
    rng = random.Random(seed)
    hold_s = hold_s if hold_s is not None else (timers.ttl_us + 2 * timers.loop_wait_us) / core.US_PER_S
    net = network.Network(f"{seed % 1000}{rng.randrange(100)}") if (use_network is not False and not reason) else None
    cluster = Cluster(root, replicas=replicas, sync=sync, sync_commit=sync_commit, network=net)
    client = aioredis.from_url(redis_url)
    store = LeaseStore(client, f"saaslab:failover:{root.name}:{seed}:leader", timers.ttl_us)
    policy = core.Policy(timers, fencing=fencing, replicas_total=replicas, sync_standbys=1 if sync else 0,
                         max_lag_bytes=max_lag_bytes)
    history = History()
    minority_stop = threading.Event()
    minority: threading.Thread | None = None
    manager: Manager | None = None
    try:
        if net:
            net.up()
        await asyncio.to_thread(cluster.start)
        await store.clear()
        manager = Manager(cluster, store, policy)
        manager.start()
        old = cluster.names[0]
        await _until(lambda: manager.leader() == old, 10, "the first primary to take the lease", manager)
        majority = Writers(PrimaryPool(_members(cluster.nodes), timeout_s=1.0), history, "w", writers)
        load = asyncio.create_task(majority.run())
        pinned: Writers | None = None
        if fault == "partition" and net:
            minority = _minority_thread(net.hosts[old], cluster.nodes, history, minority_stop)
        elif fault == "pause":  # a client pinned to the old primary, as a pool that never looks again
            pinned = Writers(PrimaryPool({old: _members(cluster.nodes)[old]}, timeout_s=1.0), history, "m", 1)
            pinned_task = asyncio.create_task(pinned.run())
        await asyncio.sleep(warmup_s)
        fault_us = now_us()
        node = cluster.nodes[old]
        if fault == "kill":
            node.crash()
        elif fault == "pause":
            node.pause()
        else:
            assert net is not None
            net.isolate(old)
            manager.cut_off(old)
        if fault != "kill":
            await asyncio.sleep(hold_s)
            node.resume() if fault == "pause" else (net.heal(), manager.cut_off(old, False))  # type: ignore[union-attr]
        await _until(lambda: manager.first("promoted", fault_us) is not None, 20, "a promotion", manager)
        if fencing:
            await _until(lambda: manager.first("rejoined", fault_us) is not None, 30, f"{old} to rejoin", manager)
        await asyncio.sleep(settle_s)
        majority.stop.set()
        minority_stop.set()
        await load
        if pinned is not None:
            pinned.stop.set()
            await pinned_task
        if minority is not None:
            await asyncio.to_thread(minority.join, 10)
        if not fencing and manager.first("rejoined", fault_us) is None:
            await manager.rejoin(old)
        await _until(lambda: manager.first("rejoined", fault_us) is not None, 30, f"{old} to rejoin", manager)
        new = next(n for n in reversed([e.node for e in manager.events if e.what == "promoted"]))
        reader = PrimaryPool({new: _members(cluster.nodes)[new]}, timeout_s=5)
        rows, _ = await reader.fetch(f"SELECT id FROM {TABLE}", write=False)
        await reader.close()
        verdict = invariants.check(history.ops, [r["id"] for r in rows], fault_us=fault_us)
        promoted = manager.first("promoted", fault_us)
        return DrillResult("postgres", design, fault, seed, verdict, history.ops,
                           None if promoted is None else (promoted.time_us - fault_us) / 1e6,
                           [{"t_s": round((e.time_us - fault_us) / 1e6, 3), "node": e.node, "what": e.what,
                             "detail": e.detail} for e in manager.events], new)
    finally:
        minority_stop.set()
        if manager is not None:
            await manager.stop()
        with contextlib.suppress(Exception):
            await client.delete(store.key, f"{store.key}:members")
        await client.aclose()
        await asyncio.to_thread(cluster.close)
        if net is not None:
            net.close()


async def _until(predicate: Any, timeout_s: float, what: str, manager: Manager) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:g} s for {what}; the manager's last events: "
                               + "; ".join(f"{e.node} {e.what} {e.detail}" for e in manager.events[-3:]))
        await asyncio.sleep(0.05)


def result_rows(result: DrillResult, run_id: str) -> list[Row]:
    """A drill as result rows: `design` the design, `tenant` the fault, `seed` the seed; metrics from
    invariants.rows plus `failover_time` (fault to promotion, s)."""
    metrics = dict(invariants.rows(result.verdict))
    if result.failover_s is not None:
        metrics["failover_time"] = (result.failover_s, "s")
    return [Row(run_id, "live", "failover", result.design, result.seed, 0.0, result.fault, name, float(value), unit)
            for name, (value, unit) in metrics.items()]
