"""A failover drill, Jepsen's way: write uniquely identified rows, strike, heal, read back, count.

`pg_drill` starts a primary and its replicas (in network namespaces when the machine allows), the
failover manager, writers on the majority's side through a `PrimaryPool` (each writer reads some of
its own acknowledged writes back: the read-your-writes probe) and, for a partition, one writer on the
primary's own side of it. After `warmup_s` the nemesis strikes the primary (`kill`: SIGKILL;
`pause`: SIGSTOP, SIGCONT `hold_s` later, with one writer pinned to the old primary; `partition`: the
primary's host cut off, its agent cut off from the lease, both healed `hold_s` later); the writers go on for `settle_s`, then stop; the old
primary rejoins (by itself, or for the unsafe design by the drill acting as the operator); every id
is read back from the surviving primary and the checker runs
(reference_impl/failover/invariants.py). With `lag_s` the lag nemesis runs first (`Rig.lag`).

`Rig` is the cluster under test on its own (servers, namespaces, lease, manager; strike, heal, lag, recover,
read the survivors): the drills and the live run (saaslab/live/failover.py, which drives the load through the
service instead) share it.
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
from saaslab.results import ALL_TENANTS, Row

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


class Rig:
    """A PostgreSQL cluster under test: its members (in network namespaces when the machine allows), the
    lease in Redis, the manager's agents, led by the first member once `start` returns. The nemesis strikes
    through it (`strike`, `heal`, `lag`, `release`), and it says when the cluster recovered and what
    survived. `close` removes every server, namespace and Redis key it made, whatever happened."""

    def __init__(self, root: Path, redis_url: str, *, design: str, seed: int = 0, replicas: int = 1,
                 timers: core.Timers = core.PRESETS["lab"], sync_commit: str = "on", use_network: bool | None = None,
                 max_lag_bytes: int | None = 1024 * 1024) -> None:
        if design not in DESIGN_POLICY:
            raise ValueError(f"unknown design {design!r}; choose one of: {', '.join(DESIGN_POLICY)}")
        sync, self.fencing = DESIGN_POLICY[design]
        self.design, self.timers = design, timers
        self.no_network = network.available()
        rng = random.Random(seed)
        self.net = (network.Network(f"{seed % 1000}{rng.randrange(100)}")
                    if (use_network is not False and not self.no_network) else None)
        self.cluster = Cluster(root, replicas=replicas, sync=sync, sync_commit=sync_commit, network=self.net)
        self.client = aioredis.from_url(redis_url)
        self.store = LeaseStore(self.client, f"saaslab:failover:{root.name}:{seed}:leader", timers.ttl_us)
        self.policy = core.Policy(timers, fencing=self.fencing, replicas_total=replicas,
                                  sync_standbys=1 if sync else 0, max_lag_bytes=max_lag_bytes)
        self.manager: Manager | None = None
        self._lagging = False

    @property
    def old(self) -> str:
        """The first primary: the one the nemesis strikes."""
        return self.cluster.names[0]

    @property
    def lease_key(self) -> str:
        """The lease's Redis key; the agents publish each member's role, LSN and timeline at `<key>:members`."""
        return self.store.key

    def members(self) -> dict[str, dict[str, Any]]:
        """asyncpg keywords per member, as a `PrimaryPool` takes them."""
        return _members(self.cluster.nodes)

    def member_urls(self) -> str:
        """The members as `SAASLAB_FAILOVER_MEMBERS` lists them: `n0=postgresql://...,n1=...`."""
        return ",".join(f"{n}={node.dsn()}" for n, node in self.cluster.nodes.items())

    async def start(self) -> Rig:
        if self.net:
            self.net.up()
        await asyncio.to_thread(self.cluster.start)
        await self.store.clear()
        self.manager = Manager(self.cluster, self.store, self.policy)
        self.manager.start()
        manager = self.led()
        await _until(lambda: manager.leader() == self.old, 10, "the first primary to take the lease", manager)
        # Steady once every replica's agent pointed it at the leader (a reload that restarts its WAL receiver).
        await _until(lambda: all(any(e.node == n and e.what == "following" for e in manager.events)
                                 for n in self.cluster.names[1:]), 10, "the replicas to follow", manager)
        return self

    def led(self) -> Manager:
        if self.manager is None:
            raise RuntimeError("the rig is not started")
        return self.manager

    async def strike(self, fault: str) -> int:
        """Kill, pause or cut off the first primary; returns when it struck (µs)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of: {', '.join(FAULTS)}")
        if fault == "partition" and self.net is None:
            raise network.NetworkError(self.no_network or "this rig runs without network namespaces")
        at = now_us()
        node = self.cluster.nodes[self.old]
        if fault == "kill":
            node.crash()
        elif fault == "pause":
            node.pause()
        else:
            assert self.net is not None
            self.net.isolate(self.old)
            self.led().cut_off(self.old)
        return at

    def heal(self, fault: str) -> None:
        """Undo a pause or a partition (a killed primary stays dead until it rejoins)."""
        if fault == "pause":
            self.cluster.nodes[self.old].resume()
        elif fault == "partition" and self.net is not None:
            self.net.heal(self.old)
            self.led().cut_off(self.old, False)

    async def lag(self, seconds: float) -> None:
        """The lag nemesis: for `seconds`, no WAL reaches the replicas; they stay held until `release`.

        With network namespaces each replica's host is cut off (the primary keeps what it sent unacknowledged by
        TCP, so a primary struck now takes it along); else (`Node.hold_replication`) their WAL receivers are
        stopped, which lags them only beyond what the kernel's socket buffers take in meanwhile (a few MB)."""
        replicas = self.cluster.names[1:]
        if self.net is not None:
            for name in replicas:
                self.net.isolate(name)
        self._lagging = True
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if self.net is None:  # a reload of primary_conninfo starts a new receiver: hold that one too
                    for name in replicas:
                        self.cluster.nodes[name].hold_replication(True)
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """End the lag nemesis: the replicas receive again."""
        if not self._lagging:
            return
        self._lagging = False
        replicas = self.cluster.names[1:]
        if self.net is not None:
            self.net.heal(*replicas)
        for name in replicas:
            self.cluster.nodes[name].hold_replication(False)

    def hold_s(self) -> float:
        """How long a pause or partition lasts by default: the lease's ttl and two loops, so it lapses."""
        return (self.timers.ttl_us + 2 * self.timers.loop_wait_us) / core.US_PER_S

    async def promoted(self, fault_us: int) -> None:
        """Until a replica is promoted after the fault, and with fencing the old primary has rejoined."""
        manager = self.led()
        await _until(lambda: manager.first("promoted", fault_us) is not None, 20, "a promotion", manager)
        if self.fencing:
            await _until(lambda: manager.first("rejoined", fault_us) is not None, 30, f"{self.old} to rejoin", manager)

    async def recovered(self, fault_us: int) -> str:
        """Once the load stopped: the old primary rejoined (by the operator when nothing fences it); the new
        primary's name."""
        manager = self.led()
        if not self.fencing and manager.first("rejoined", fault_us) is None:
            await manager.rejoin(self.old)
        await _until(lambda: manager.first("rejoined", fault_us) is not None, 30, f"{self.old} to rejoin", manager)
        return next(e.node for e in reversed(manager.events) if e.what == "promoted")

    async def survivors(self, primary: str, tenant: str = "") -> list[str]:
        """Every id `tenant` has on `primary` (the drills write as tenant '')."""
        reader = PrimaryPool({primary: self.members()[primary]}, timeout_s=5)
        try:
            rows, _ = await reader.fetch(f"SELECT id FROM {TABLE} WHERE tenant_id = $1", tenant, write=False)
        finally:
            await reader.close()
        return [r["id"] for r in rows]

    def failover_s(self, fault_us: int) -> float | None:
        promoted = self.led().first("promoted", fault_us)
        return None if promoted is None else (promoted.time_us - fault_us) / 1e6

    def events(self, fault_us: int) -> list[dict[str, Any]]:
        return [{"t_s": round((e.time_us - fault_us) / 1e6, 3), "node": e.node, "what": e.what, "detail": e.detail}
                for e in self.led().events]

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
        with contextlib.suppress(Exception):
            await self.client.delete(self.store.key, f"{self.store.key}:members")
        await self.client.aclose()
        await asyncio.to_thread(self.cluster.close)
        if self.net is not None:
            self.net.close()

    async def __aenter__(self) -> Rig:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


async def pg_drill(root: Path, redis_url: str, *, design: str, fault: str, seed: int = 0, replicas: int = 1,
                   timers: core.Timers = core.PRESETS["lab"], sync_commit: str = "on", writers: int = 4,
                   warmup_s: float = 1.5, hold_s: float | None = None, settle_s: float = 1.5, lag_s: float = 0.0,
                   use_network: bool | None = None, max_lag_bytes: int | None = 1024 * 1024) -> DrillResult:
    """One PostgreSQL drill; every server, namespace and Redis key it made is gone when it returns.

    `lag_s` > 0 holds the replicas' WAL receivers for that long before the fault strikes (the lag nemesis),
    so an async primary struck then has acknowledged writes no replica received."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose one of: {', '.join(FAULTS)}")
    rig = Rig(root, redis_url, design=design, seed=seed, replicas=replicas, timers=timers, sync_commit=sync_commit,
              use_network=use_network, max_lag_bytes=max_lag_bytes)
    if fault == "partition" and rig.no_network:
        raise network.NetworkError(rig.no_network)
    hold_s = hold_s if hold_s is not None else rig.hold_s()
    history = History()
    minority_stop = threading.Event()
    minority: threading.Thread | None = None
    try:
        async with rig:
            old = rig.old
            majority = Writers(PrimaryPool(rig.members(), timeout_s=1.0), history, "w", writers)
            load = asyncio.create_task(majority.run())
            pinned: Writers | None = None
            if fault == "partition" and rig.net:
                minority = _minority_thread(rig.net.hosts[old], rig.cluster.nodes, history, minority_stop)
            elif fault == "pause":  # a client pinned to the old primary, as a pool that never looks again
                pinned = Writers(PrimaryPool({old: rig.members()[old]}, timeout_s=1.0), history, "m", 1)
                pinned_task = asyncio.create_task(pinned.run())
            await asyncio.sleep(warmup_s)
            if lag_s > 0:
                await rig.lag(lag_s)
            fault_us = await rig.strike(fault)
            rig.release()
            if fault != "kill":
                await asyncio.sleep(hold_s)
                rig.heal(fault)
            await rig.promoted(fault_us)
            await asyncio.sleep(settle_s)
            majority.stop.set()
            minority_stop.set()
            await load
            if pinned is not None:
                pinned.stop.set()
                await pinned_task
            if minority is not None:
                await asyncio.to_thread(minority.join, 10)
            new = await rig.recovered(fault_us)
            verdict = invariants.check(history.ops, await rig.survivors(new), fault_us=fault_us)
            return DrillResult("postgres", design, fault, seed, verdict, history.ops, rig.failover_s(fault_us),
                               rig.events(fault_us), new)
    finally:
        minority_stop.set()


async def _until(predicate: Any, timeout_s: float, what: str, manager: Manager) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:g} s for {what}; the manager's last events: "
                               + "; ".join(f"{e.node} {e.what} {e.detail}" for e in manager.events[-3:]))
        await asyncio.sleep(0.05)


def named_timers(ttl_s: float, loop_wait_s: float, retry_timeout_s: float) -> core.Timers:
    """Timers named by the preset they equal (`lab`, `patroni`...), else `ttl<s>`: the name a metric's condition carries."""
    timers = core.timers_s(f"ttl{ttl_s:g}", ttl_s, loop_wait_s, retry_timeout_s)
    same = (timers.ttl_us, timers.loop_wait_us, timers.retry_timeout_us)
    return next((p for p in core.PRESETS.values() if (p.ttl_us, p.loop_wait_us, p.retry_timeout_us) == same), timers)


def condition(fault: str, hold_s: float, timers: str, lag_s: float = 0.0) -> str:
    """The suffix a drill's metrics carry, as the simulation's do (`writes_lost@pause5s/lab`): the fault, how
    long it was held (not for a kill), the timers' preset and, when the lag nemesis ran, the lag held."""
    hold = "" if fault == "kill" else f"{hold_s:g}s"
    return f"@{fault}{hold}/{timers}" + (f"/lag{lag_s * 1000:g}ms" if lag_s > 0 else "")


def result_rows(result: DrillResult, run_id: str, suffix: str = "") -> list[Row]:
    """A drill as result rows: `design` the design, `tenant` "*", `seed` the seed; metrics from
    invariants.rows plus `failover_s` (fault to promotion, s), each name followed by `suffix` (`condition`)."""
    metrics = dict(invariants.rows(result.verdict))
    if result.failover_s is not None:
        metrics["failover_s"] = (result.failover_s, "s")
    return [Row(run_id, "live", "failover", result.design, result.seed, 0.0, ALL_TENANTS, name + suffix, float(value),
                unit) for name, (value, unit) in metrics.items()]
