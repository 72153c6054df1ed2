"""The failover manager: one agent per PostgreSQL member, each driving core.step every loop_wait.

An agent observes its own server over its Unix socket, the other members over the network (their
status decides which replica is the most advanced) and the lease in Redis, then performs what
`reference_impl/failover/core.py` decides: renew or take the lease, promote (`pg_promote`), fence
(`default_transaction_read_only`, and every session ended so none keeps writing; a server that does
not answer is stopped with SIGKILL, as Patroni's watchdog would reset the node), unfence, follow a
new leader (a reloaded `primary_conninfo`), or rejoin as a replica: `pg_rewind` when the timeline
check (`core.needs_rewind`) says the member wrote past the new timeline's fork, then start as a
standby. Each agent publishes its member's role, position and timeline beside the lease, which is
what `GET /admin/topology` shows.

`cut_off(name)` puts an agent on the far side of a partition from Redis: the drills isolate a host's
network and its agent's store together, as a real partition would cut Patroni off from etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from reference_impl.failover import core
from reference_impl.failover.lease import LeaseStore
from reference_impl.failover.pgcluster import (
    FENCE_SQL,
    PROMOTE_SQL,
    UNFENCE_SQL,
    Cluster,
    Node,
    Status,
    execute,
    status,
)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Event:
    time_us: int
    node: str
    what: str
    detail: str = ""


@dataclass
class Agent:
    node: Node
    state: core.AgentState
    cut: bool = False
    following: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held for each loop, and by an operator's rejoin: one thing at a time happens to a member."""
    last: Status = field(default_factory=lambda: Status("down"))


class Manager:
    def __init__(self, cluster: Cluster, store: LeaseStore, policy: core.Policy) -> None:
        self.cluster = cluster
        self.store = store
        self.policy = policy
        self.agents = {n: Agent(node, core.AgentState(n)) for n, node in cluster.nodes.items()}
        self.events: list[Event] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.timeout_s = policy.timers.retry_timeout_us / core.US_PER_S

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(a), name=f"agent-{n}") for n, a in self.agents.items()]

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def cut_off(self, name: str, cut: bool = True) -> None:
        self.agents[name].cut = cut

    def leader(self) -> str | None:
        """The holder of the lease the last agent loop saw (None before the first)."""
        return next((e.node for e in reversed(self.events) if e.what in ("promoted", "acquired")), None)

    def first(self, what: str, after_us: int) -> Event | None:
        return next((e for e in self.events if e.what == what and e.time_us >= after_us), None)

    # -- one agent --------------------------------------------------------------------------------
    async def _loop(self, agent: Agent) -> None:
        wait_s = self.policy.timers.loop_wait_us / core.US_PER_S
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                async with agent.lock:
                    await self.once(agent)
            except Exception as err:  # an agent outlives a failed action and tries again next loop
                self._event(agent, "error", repr(err)[-400:])
            await asyncio.sleep(max(0.0, wait_s - (time.monotonic() - started)))

    async def once(self, agent: Agent) -> None:
        name = agent.node.name
        others = [a for n, a in self.agents.items() if n != name]
        mine, lease, *peers = await asyncio.gather(
            status(agent.node.local_kwargs(), self.timeout_s), self._read_lease(agent),
            *(status(_tcp(a.node), self.timeout_s) for a in others))
        if mine.role != "down":
            agent.last = mine
        me = core.Member(name, mine.role, mine.lsn, mine.timeline)  # type: ignore[arg-type]
        # A fenced primary (read-only) no longer counts as a live one that forbids a promotion.
        members = tuple(core.Member(a.node.name, "down" if s.read_only and s.role == "primary" else s.role,  # type: ignore[arg-type]
                                    s.lsn, s.timeline) for a, s in zip(others, peers, strict=True))
        at = now_us()
        agent.state, actions = core.step(agent.state, core.Observation(at, me, lease, members), self.policy)
        for action in actions:
            await self._perform(agent, action, mine, at)
        if not agent.cut:
            with contextlib.suppress(Exception):
                await self.store.client.hset(f"{self.store.key}:members", name, json.dumps(
                    {"role": mine.role, "lsn": mine.lsn, "timeline": mine.timeline, "read_only": mine.read_only,
                     "address": f"{agent.node.address}:{agent.node.port}", "at_us": at}))

    async def _read_lease(self, agent: Agent) -> core.Lease | None:
        if agent.cut:
            return None
        try:
            return await asyncio.wait_for(self.store.read(), self.timeout_s)
        except Exception:
            return None

    async def _perform(self, agent: Agent, action: core.Action, mine: Status, at: int) -> None:
        node = agent.node
        if isinstance(action, core.Renew | core.Acquire):
            won = None if agent.cut else await self.store.take(
                node.name, at, renewal=isinstance(action, core.Renew), lsn=mine.lsn, timeline=mine.timeline)
            if won is None:
                return
            agent.state = core.renewed(agent.state, at)
            if isinstance(action, core.Acquire):
                self._event(agent, "acquired", f"term {won.term}")
                if action.promote:
                    ok = await execute(node.local_kwargs(), PROMOTE_SQL, 30)
                    self._event(agent, "promoted" if ok else "promote_failed")
                    # A promotion can outlast a loop: renew at once rather than fence over it.
                    again = now_us()
                    if ok and await self.store.take(node.name, again, renewal=True, lsn=mine.lsn,
                                                    timeline=mine.timeline + 1):
                        agent.state = core.renewed(agent.state, again)
        elif isinstance(action, core.Fence):
            ok = mine.role == "primary" and await execute(node.local_kwargs(), FENCE_SQL, self.timeout_s)
            if not ok:
                await asyncio.to_thread(node.hard_stop)
            self._event(agent, "fenced", "read-only" if ok else "stopped")
        elif isinstance(action, core.Unfence):
            await execute(node.local_kwargs(), UNFENCE_SQL, self.timeout_s)
            self._event(agent, "unfenced")
        elif isinstance(action, core.Follow):
            await self._follow(agent, action, mine)

    async def _follow(self, agent: Agent, action: core.Follow, mine: Status) -> None:
        node, leader = agent.node, self.cluster.nodes[action.leader]
        if mine.role == "replica":
            conninfo = leader.conninfo().format(name=node.name)
            if agent.following != leader.name:
                ok = await execute(node.local_kwargs(), (f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'",
                                                         "SELECT pg_reload_conf()"), self.timeout_s)
                if ok:
                    agent.following = leader.name
                    self._event(agent, "following", leader.name)
            return
        if mine.role == "down" and node.running and not self.policy.fencing:
            return  # without fencing nobody stops a server that is running but out of reach
        lead = await status(_tcp(leader), self.timeout_s)
        if lead.role != "primary":
            return  # the new leader has not promoted yet
        fork = await _fork_lsn(leader, agent.last.timeline, self.timeout_s)
        rewound = await asyncio.to_thread(self._rejoin, node, leader, lead.timeline, fork)
        self._event(agent, "rejoining", f"rewind={rewound} timeline {agent.last.timeline}->{lead.timeline}")
        agent.state = core.AgentState(node.name)
        agent.following = leader.name
        self._event(agent, "rejoined")

    async def rejoin(self, name: str) -> None:
        """What an operator does for a design without fencing: demote `name` to follow the leader."""
        agent = self.agents[name]
        lease = await self.store.read()
        if lease.holder is None or lease.holder == name:
            raise RuntimeError(f"{name} cannot rejoin: the lease is held by {lease.holder}")
        async with agent.lock:
            mine = await status(agent.node.local_kwargs(), self.timeout_s)
            await self._follow(agent, core.Follow(lease.holder, True), mine)

    def _event(self, agent: Agent, what: str, detail: str = "") -> None:
        self.events.append(Event(now_us(), agent.node.name, what, detail))


    def _rejoin(self, node: Node, leader: Node, leader_timeline: int, fork_lsn: int | None) -> bool:
        """Stop the member, decide on a rewind from where its WAL ends, follow `leader`; True if rewound.
        A member that crashed or was killed has an unknown end of WAL, so it is rewound."""
        clean = node.hard_stop()
        timeline, lsn = node.end_of_wal() if clean else (0, None)
        if core.needs_rewind(timeline, lsn, leader_timeline, fork_lsn):
            self.cluster.rewind(node, leader)
            return True
        node.write_standby_config(leader)
        node.start()
        return False


def _tcp(node: Node) -> dict[str, Any]:
    return {"host": node.address, "port": node.port, "user": "postgres", "database": "postgres"}


async def _fork_lsn(leader: Node, my_timeline: int, timeout_s: float) -> int | None:
    """Where the leader's history left `my_timeline` (from its timeline history file), or None."""
    import asyncpg
    try:
        conn = await asyncpg.connect(**_tcp(leader), timeout=timeout_s)
    except Exception:
        return None
    try:
        tli = await conn.fetchval("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")
        if tli == my_timeline:
            return None
        text = await conn.fetchval("SELECT pg_read_file('pg_wal/' || lpad(upper(to_hex($1::int)), 8, '0') || '.history')",
                                   tli, timeout=timeout_s)
        for line in (text or "").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == str(my_timeline):
                hi, lo = parts[1].split("/")
                return (int(hi, 16) << 32) + int(lo, 16)
        return None
    except Exception:
        return None
    finally:
        conn.terminate()
