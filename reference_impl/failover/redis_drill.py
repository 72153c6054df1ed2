"""A Redis Sentinel failover drill, Jepsen's way: add uniquely identified ids to a set, strike, heal,
read the set back from the new master, count.

`redis_drill` starts a master, a replica and three Sentinels (reference_impl/failover/redis_cluster.py,
in network namespaces when the machine allows) and writers on the majority's side, each with its own
`SentinelClient` (reference_impl/failover/redis_client.py), adding `SADD failover:writes <id>`; every
fifth acknowledged id is read back (the read-your-writes probe). After the warm-up (`warmup_s`, plus
up to half a second drawn from the seed) the nemesis strikes the master:

* `kill`: SIGKILL; once the Sentinels have switched, the node restarts as the new master's replica.
* `pause`: SIGSTOP, SIGCONT `hold_s` later; a client pinned to the old master (redis-py's known
  failure: it never asks Sentinel again) writes to it before and after.
* `partition`: the master's host (with Sentinel `s0` beside it) cut off the bridge for `hold_s`; a
  client inside that host keeps writing to it, as the PostgreSQL partition drill's minority writer.

Then, with `converge_s` > 0, the drill waits (at most that long) for Sentinel to turn the old master
into a replica of the new one, which it does about 10 s after it sees the old master again (Sentinel
waits out its INFO period and a settling delay first); until then a paused or cut-off master that
woke up still takes writes from whoever still talks to it. The writers go on for `settle_s`, stop, the
set is read from the master the majority's Sentinels name, and the checker runs
(reference_impl/failover/invariants.py) on the history; the unavailability window is the majority's
writers' (the service's clients), since the minority's acknowledgements are no recovery.

Designs: `plain` acknowledges what the master replies; `wait` acknowledges only when
`WAIT 1 <wait_ms>` counted the replica (a WAIT that times out is not an acknowledgement); and
`min_replicas` runs every node with `min-replicas-to-write 1` and `min-replicas-max-lag`, so an
isolated master refuses writes (NOREPLICAS) once its replica has been silent that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from reference_impl.failover import invariants, network
from reference_impl.failover.drill import FAULTS, DrillResult
from reference_impl.failover.manager import now_us
from reference_impl.failover.redis_client import NotReplicated, SentinelClient, WriteRefused, WriteUnknown
from reference_impl.failover.redis_cluster import DESIGNS, SERVICE, RedisCluster, SentinelTimers
from saaslab.history import History

KEY = "failover:writes"
REDIS_NET = 78
"""The drills' subnet (10.78.0.0/24): apart from the PostgreSQL drills' 10.77, so both may run at once."""


class RedisWriters:
    """`n` writer tasks on this event loop, each with its own client; ids are `<tag>-<writer>-<seq>`."""

    def __init__(self, make_client: Callable[[], SentinelClient], history: History, tag: str, n: int, *,
                 probe_every: int = 5, pace_s: float = 0.005) -> None:
        self.make_client, self.history, self.tag, self.n = make_client, history, tag, n
        self.probe_every, self.pace_s = probe_every, pace_s
        self.stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._writer(i) for i in range(self.n)))

    async def _writer(self, i: int) -> None:
        client = self.make_client()
        process = f"{self.tag}{i}"
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                wid = f"{self.tag}-{i}-{seq}"
                op = self.history.invoke("write", {"id": wid}, process=process)
                try:
                    _, server = await client.write("SADD", KEY, wid)
                except WriteRefused as err:
                    self.history.complete(op, "fail", {"error": str(err)})
                    await asyncio.sleep(0.05)
                    continue
                except (WriteUnknown, RedisError, OSError) as err:  # NotReplicated too: not an acknowledgement
                    client.drop()
                    kind = "not replicated" if isinstance(err, NotReplicated) else type(err).__name__
                    self.history.complete(op, "info", {"error": f"{kind}: {err}"[:200]})
                    await asyncio.sleep(0.05)
                    continue
                self.history.complete(op, "ok", {"server": server})
                if seq % self.probe_every == 0:
                    await self._probe(client, process, wid)
                await asyncio.sleep(self.pace_s)
        finally:
            await client.close()

    async def _probe(self, client: SentinelClient, process: str, wid: str) -> None:
        op = self.history.invoke("read", {"id": wid}, process=process)
        try:
            found, server = await client.read("SISMEMBER", KEY, wid)
            self.history.complete(op, "ok", {"found": bool(found), "server": server})
        except (WriteRefused, RedisError, OSError) as err:
            self.history.complete(op, "fail", {"error": str(err)[:200]})


class SentinelEvents:
    """Every event Sentinels `s1` and `s2` (the majority's side) publish, timed as they arrive."""

    WATCHED = ("s1", "s2")

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.events: list[tuple[int, str, str, str]] = []
        """(time_us, sentinel, channel, message)."""
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name in self.WATCHED:
            self._tasks.append(asyncio.create_task(self._listen(name)))

    async def _listen(self, name: str) -> None:
        node = self.cluster.sentinels[name]
        client = Redis(host=node.address, port=node.port or 0, decode_responses=True)
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe("*")
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if msg and msg["channel"] != "__sentinel__:hello":
                    self.events.append((now_us(), name, msg["channel"], str(msg["data"])))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()

    def first(self, channel: str, since_us: int) -> tuple[int, str] | None:
        """(time, message) of the first `channel` event at or after `since_us`."""
        return next(((t, m) for t, _, c, m in self.events if c == channel and t >= since_us), None)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _minority_thread(host: network.Host, make_client: Callable[[], SentinelClient], history: History,
                     stop: threading.Event) -> threading.Thread:
    """A writer inside the master's host: when the host is cut off it stays on the master's side."""

    def main() -> None:
        with network.inside(host):
            async def go() -> None:
                writers = RedisWriters(make_client, history, "m", 1)
                task = asyncio.create_task(writers.run())
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                writers.stop.set()
                await task
            asyncio.run(go())

    t = threading.Thread(target=main, name="redis-minority-writer", daemon=True)
    t.start()
    return t


async def redis_drill(root: Path, *, design: str, fault: str, seed: int = 0,
                      timers: SentinelTimers | None = None, wait_ms: int = 200, writers: int = 4,
                      warmup_s: float = 1.5, hold_s: float = 4.0, settle_s: float = 1.0, converge_s: float = 0.0,
                      use_network: bool | None = None) -> DrillResult:
    """One Redis drill; every server and namespace it made is gone when it returns."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose one of: {', '.join(FAULTS)}")
    if design not in DESIGNS:
        raise ValueError(f"unknown Redis design {design!r}; choose one of: {', '.join(DESIGNS)}")
    timers = timers or SentinelTimers()
    reason = network.available()
    if fault == "partition" and (reason or use_network is False):
        raise network.NetworkError(reason or "a partition needs the network namespaces")
    rng = random.Random(seed)
    net = (network.Network(f"r{seed % 1000}{rng.randrange(10)}", net=REDIS_NET)
           if use_network is not False and not reason else None)
    cluster = RedisCluster(root, design=design, timers=timers, network=net)
    history = History()
    sentinel_events = SentinelEvents(cluster)
    wait_replicas = 1 if design == "wait" else 0
    minority_stop = threading.Event()
    minority: threading.Thread | None = None
    extra: list[dict[str, Any]] = []
    try:
        if net:
            net.up()
        await asyncio.to_thread(cluster.start)
        sentinel_events.start()
        sentinels = cluster.sentinel_addresses()
        old = cluster.data["r0"]

        def client() -> SentinelClient:
            return SentinelClient(sentinels, SERVICE, wait_replicas=wait_replicas, wait_ms=wait_ms)

        majority = RedisWriters(client, history, "w", writers)
        load = asyncio.create_task(majority.run())
        pinned: RedisWriters | None = None
        pinned_task: asyncio.Task[None] | None = None
        if fault == "partition":
            assert net is not None
            minority = _minority_thread(net.hosts["r0"], client, history, minority_stop)
        elif fault == "pause":
            pinned = RedisWriters(lambda: SentinelClient([], SERVICE, wait_replicas=wait_replicas, wait_ms=wait_ms,
                                                         pinned=(old.address, old.port or 0)), history, "m", 1)
            pinned_task = asyncio.create_task(pinned.run())
        await asyncio.sleep(warmup_s + rng.uniform(0, 0.5))

        fault_us = now_us()
        if fault == "kill":
            old.kill()
        elif fault == "pause":
            old.pause()
        else:
            assert net is not None
            net.isolate("r0")
        switch_timeout_s = 4 * timers.down_after_ms / 1000 + timers.failover_timeout_ms / 1000 + 5
        if fault == "kill":
            new = await _until_switch(cluster, old.endpoint, switch_timeout_s)
            if new is None:
                raise TimeoutError(f"the Sentinels named no new master within {switch_timeout_s:g} s of the kill")
            await asyncio.to_thread(cluster.restart_as_replica, "r0", new)
            extra.append({"t_s": _since(fault_us), "node": "r0", "what": "restarted", "detail": f"replica of {new}"})
        else:
            await asyncio.sleep(hold_s)
            old.resume() if fault == "pause" else net.heal()  # type: ignore[union-attr]
            extra.append({"t_s": _since(fault_us), "node": "r0", "what": "healed", "detail": fault})
            # A pause or cut shorter than Sentinel's detection leaves the old master in charge.
            new = await _until_switch(cluster, old.endpoint, switch_timeout_s) or old.endpoint
        if converge_s > 0 and fault != "kill" and new != old.endpoint:
            if await _until_replica(cluster, "r0", new, converge_s):
                extra.append({"t_s": _since(fault_us), "node": "r0", "what": "converted", "detail": f"replica of {new}"})
            else:
                extra.append({"t_s": _since(fault_us), "node": "r0", "what": "not converted",
                              "detail": f"still not a replica {converge_s:g} s later"})
        await asyncio.sleep(settle_s)
        majority.stop.set()
        minority_stop.set()
        if pinned is not None:
            pinned.stop.set()
        await load
        if pinned_task is not None:
            await pinned_task
        if minority is not None:
            await asyncio.to_thread(minority.join, 10)

        survivors = await asyncio.to_thread(_read_set, cluster, new)
        verdict = invariants.check(history.ops, survivors, fault_us=fault_us)
        # The window the service's clients saw: the minority's or the pinned client's acknowledgements
        # (to a master about to lose them) are no recovery.
        verdict.unavailability = invariants.unavailability(
            invariants.writes(op for op in history.ops if (op.process or "").startswith("w")), fault_us)
        switched = sentinel_events.first("+switch-master", fault_us)
        events = [{"t_s": round((t - fault_us) / 1e6, 3), "node": s, "what": c, "detail": m}
                  for t, s, c, m in sentinel_events.events if c.startswith(("+", "-")) and t >= fault_us - 1_000_000]
        return DrillResult("redis", design, fault, seed, verdict, history.ops,
                           None if switched is None else (switched[0] - fault_us) / 1e6,
                           sorted(events + extra, key=lambda e: e["t_s"]), cluster.by_endpoint(new).name,
                           fault_us)
    finally:
        minority_stop.set()
        await sentinel_events.stop()
        await asyncio.to_thread(cluster.close)
        if net is not None:
            net.close()


def _since(fault_us: int) -> float:
    return round((now_us() - fault_us) / 1e6, 3)


async def _until_switch(cluster: RedisCluster, old: str, timeout_s: float) -> str | None:
    """The new master's `address:port`, once the majority's Sentinels name one other than `old`
    (None if they do not within `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        master = await asyncio.to_thread(cluster.master_by_majority)
        if master is not None and master != old:
            return master
        await asyncio.sleep(0.05)
    return None


async def _until_replica(cluster: RedisCluster, name: str, master: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(cluster.role, name) == ("slave", master):
            return True
        await asyncio.sleep(0.1)
    return False


def _read_set(cluster: RedisCluster, master: str) -> set[str]:
    with contextlib.closing(cluster.by_endpoint(master).client(5.0)) as c:
        return set(c.smembers(KEY))
