"""The simulated cluster: two PostgreSQL servers, a lease store, one agent per server driving
reference_impl/failover/core.py's `step`, the network between hosts, client pools writing, and the
nemesis. Times are integer µs on SimPy's clock.

The agents do what reference_impl/failover/manager.py does with core's actions, against simulated
servers: observe (own server, lease, peers, each call bounded by retry_timeout), step, then renew or
take the lease (core's `acquire`/`renew` applied atomically at the store), promote, fence (read-only,
or stop a server that does not answer, as Patroni's watchdog would), unfence, follow or rejoin (a
rewind decided by core's `needs_rewind`). The pools do what reference_impl/failover/pool.py does:
find the first member that is a primary and not read-only, write there, drop it on an error.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from reference_impl.failover import core
from saaslab.history import History
from saaslab.results import LatencyHistogram
from scenarios.failover.plan import Setup

US_PER_MS = 1_000
US_PER_S = 1_000_000
Gen = Generator[simpy.Event, Any, Any]
CLIENTS_HOST = "clients"
STORE_HOST = "store"
LAG_JITTER = 0.1
"""A write reaches the replica lag ± 10% after its commit, in order: the stream's lag stays near `lag_ms` (an
exponential delay kept in order would run at several times its mean)."""


@dataclass
class Server:
    """One PostgreSQL server: its WAL (write ids in order), role, timeline and process state."""

    name: str
    role: str
    """`primary` or `replica` (what pg_is_in_recovery says)."""
    log: list[str] = field(default_factory=list)
    timeline: int = 1
    read_only: bool = False
    dead: bool = False
    paused: bool = False
    following: str | None = None
    forks: dict[int, int] = field(default_factory=dict)
    """Timeline -> the position (bytes) where it forked from the one before: the timeline history file."""
    last_arrival_us: int = 0
    stream_ok: bool = True
    """A replica's stream from its leader: broken at the first record that could not be delivered."""


class Lab:
    """One run: the cluster, its network and clients (see the module docstring)."""

    def __init__(self, policy: core.Policy, setup: Setup, rng: random.Random, *, rate: float = 0.0,
                 lag_ms: float = 1.0, servers: int = 2) -> None:
        self.env = simpy.Environment()
        self.policy, self.timers, self.setup, self.rng = policy, policy.timers, setup, rng
        self.rate, self.lag_us = rate, lag_ms * US_PER_MS
        self.names = [f"pg{i}" for i in range(servers)]
        self.servers = {n: Server(n, "primary" if i == 0 else "replica", following=None if i == 0 else "pg0")
                        for i, n in enumerate(self.names)}
        self._resumed = {n: self.env.event() for n in self.names}
        self._ended = {n: self.env.event() for n in self.names}
        """Triggered when a server's sessions end (killed, fenced, demoted): their writes get no answer."""
        self._acks: dict[tuple[str, int], simpy.Event] = {}
        # The cluster starts as the drills wait for it to be: the first server primary and holding the lease.
        self.lease = core.acquire(core.FREE, "pg0", 0, self.timers.ttl_us)
        self.cut: set[str] = set()
        self.spike: tuple[str, int] | None = None
        """(host, until_us): messages to or from that host are slow until then."""
        self.history = History(process="sim")
        self.events: list[tuple[int, str, str]] = []
        self.write_latency = LatencyHistogram()
        self.pools = [Pool(self, f"w{i}", "pg0" if i == 0 else CLIENTS_HOST) for i in range(setup.pools)]
        self._writes = 0

    # --- time and the network ------------------------------------------------------------------
    @property
    def now(self) -> int:
        return int(self.env.now)

    def wait(self, us: float) -> simpy.Timeout:
        return self.env.timeout(max(0, round(us)))

    def one_way_us(self, a: str, b: str) -> float | None:
        """A message from host a to host b: its delay, or None when a partition is between them."""
        if a == b:
            return 0.0
        if a in self.cut or b in self.cut:
            return None
        delay = self.setup.net_rtt_ms * US_PER_MS / 2
        if self.spike is not None and self.spike[0] in (a, b) and self.now < self.spike[1]:
            delay += self.rng.expovariate(1 / (self.setup.spike_mean_ms * US_PER_MS))
        return delay

    def rtt_us(self, a: str, b: str) -> float | None:
        there, back = self.one_way_us(a, b), self.one_way_us(b, a)
        return None if there is None or back is None else there + back

    def event(self, node: str, what: str) -> None:
        self.events.append((self.now, node, what))

    def first(self, what: str, after_us: int, node: str | None = None) -> int | None:
        return next((t for t, n, w in self.events if w == what and t >= after_us and node in (None, n)), None)

    # --- servers -------------------------------------------------------------------------------
    def lsn(self, s: Server) -> int:
        return len(s.log) * self.setup.record_bytes

    def status(self, observer: str, name: str) -> tuple[core.Member, float, bool]:
        """What `observer`'s host learns asking server `name` how it is: (member, how long it took, whether
        it is a writable primary). A server that is paused or cut off does not answer within retry_timeout;
        a dead one refuses at once."""
        s, limit = self.servers[name], self.timers.retry_timeout_us
        rtt = self.rtt_us(observer, name)
        if rtt is None or s.paused or rtt > limit:
            return core.Member(name, "down"), limit, False
        if s.dead:
            return core.Member(name, "down"), rtt, False
        role = s.role
        return core.Member(name, role, self.lsn(s), s.timeline), rtt, role == "primary" and not s.read_only  # type: ignore[arg-type]

    def end_sessions(self, name: str) -> None:
        self._ended[name].succeed()
        self._ended[name] = self.env.event()

    def write(self, name: str, wid: str, one_way_us: float) -> Gen:
        """A write reaching server `name`: 'ok', 'readonly', 'reset' (no answer: the session ended, so the
        outcome is unknown) or 'noreply' (the answer cannot get back)."""
        s = self.servers[name]
        # The commit's own time rides with the request: one event fewer per write, the same outcome unless
        # the server is paused, killed or fenced in that half millisecond.
        yield self.wait(one_way_us + self.rng.expovariate(1 / (self.setup.commit_ms * US_PER_MS)))
        while s.paused:  # a stopped process: the write waits in the socket
            ended = self._ended[name]
            yield self._resumed[name] | ended
            if ended.triggered:
                return "reset"
        if s.dead:
            return "reset"
        if s.role != "primary" or s.read_only:
            return "readonly"
        ended = self._ended[name]
        s.log.append(wid)
        lsn = len(s.log)
        self._ship(s, wid, lsn)
        if self.policy.sync_standbys:
            ack = self._acks.setdefault((name, lsn), self.env.event())
            yield ack | ended
            if not ack.triggered:
                return "reset"
        return "ok"

    def _ship(self, primary: Server, wid: str, lsn: int) -> None:
        for r in self.servers.values():
            if r.following == primary.name and r.role == "replica" and r.stream_ok and not r.dead:
                at = max(r.last_arrival_us, self.now + round(self.lag_us * self.rng.uniform(1 - LAG_JITTER, 1 + LAG_JITTER)))
                r.last_arrival_us = at
                self.env.process(self._deliver(primary, r, wid, lsn, at))

    def _deliver(self, primary: Server, replica: Server, wid: str, lsn: int, at_us: int) -> Gen:
        yield self.wait(at_us - self.now)
        while primary.paused and not primary.dead:  # the walsender is stopped with its server
            yield self._resumed[primary.name] | self._ended[primary.name]
        ok = (replica.stream_ok and replica.following == primary.name and replica.role == "replica"
              and not replica.dead and not primary.dead and len(replica.log) == lsn - 1
              and self.one_way_us(primary.name, replica.name) is not None)
        if not ok:
            replica.stream_ok = False
            return
        replica.log.append(wid)
        if self.policy.sync_standbys:
            back = self.one_way_us(replica.name, primary.name)
            if back is not None:
                yield self.wait(back)
                ack = self._acks.setdefault((primary.name, lsn), self.env.event())
                if not ack.triggered:
                    ack.succeed()

    def promote(self, s: Server) -> None:
        s.forks[s.timeline + 1] = self.lsn(s)
        s.timeline += 1
        s.role, s.following, s.read_only = "primary", None, False
        self.event(s.name, "promoted")

    def rejoin(self, s: Server, leader: Server) -> bool:
        """`s` becomes a replica of `leader`; True if core's timeline check asked for a rewind first. A simulated
        WAL survives a crash whole, so even a killed member's end of WAL is known."""
        fork = leader.forks.get(s.timeline + 1) if leader.timeline == s.timeline + 1 else None
        rewind = core.needs_rewind(s.timeline, self.lsn(s), leader.timeline, fork)
        s.log = list(leader.log)  # a rewound member discards what it wrote past the fork, then streams
        s.role, s.timeline, s.following, s.read_only = "replica", leader.timeline, leader.name, False
        s.dead = s.paused = False
        s.stream_ok, s.last_arrival_us = True, self.now
        self.event(s.name, "rejoined (rewound)" if rewind else "rejoined")
        return rewind

    def kill(self, name: str) -> None:
        s = self.servers[name]
        s.dead = True
        if s.paused:
            s.paused = False
        self.end_sessions(name)

    def pause(self, name: str) -> None:
        self.servers[name].paused = True

    def resume(self, name: str) -> None:
        s = self.servers[name]
        if s.paused:
            s.paused = False
            self._resumed[name].succeed()
            self._resumed[name] = self.env.event()

    # --- the agents ----------------------------------------------------------------------------
    def agent(self, name: str) -> Gen:
        """One member's agent: core.step every loop_wait, from a random phase (agents start apart)."""
        state = core.AgentState(name)
        if self.lease.holder == name:
            state = core.renewed(state, 0)
        loop = self.timers.loop_wait_us
        yield self.wait(self.rng.uniform(0, loop))
        while True:
            started = self.now
            state = yield from self._once(name, state)
            yield self.wait(max(0, loop - (self.now - started)))

    def _once(self, name: str, state: core.AgentState) -> Gen:
        s, limit = self.servers[name], self.timers.retry_timeout_us
        me = (core.Member(name, "down") if s.dead or s.paused
              else core.Member(name, s.role, self.lsn(s), s.timeline))  # type: ignore[arg-type]
        took = [limit if s.paused else 0.0]
        lease: core.Lease | None = None
        store_rtt = self.rtt_us(name, STORE_HOST)
        if store_rtt is not None and store_rtt <= limit:
            lease = self.lease
            took.append(store_rtt)
        else:
            took.append(limit)
        peers = []
        for other in self.names:
            if other != name:
                member, t, _ = self.status(name, other)
                # A fenced primary (read-only) is no live primary for the decision: as the manager reports it.
                if member.role == "primary" and self.servers[other].read_only:
                    member = core.Member(other, "down", member.lsn, member.timeline)
                peers.append(member)
                took.append(t)
        yield self.wait(max(took))
        at = self.now
        state, actions = core.step(state, core.Observation(at, me, lease, tuple(peers)), self.policy)
        for action in actions:
            state = yield from self._perform(name, state, action, me, at)
        return state

    def _take(self, name: str, at: int, *, renewal: bool, lsn: int, timeline: int) -> Gen:
        """The store's compare-and-set of core's `renew` or `acquire`; the lease won, or None."""
        there, back = self.one_way_us(name, STORE_HOST), self.one_way_us(STORE_HOST, name)
        if there is None:
            return None
        yield self.wait(there)
        decide = core.renew if renewal else core.acquire
        new = decide(self.lease, name, at, self.timers.ttl_us, lsn=lsn, timeline=timeline)
        if new is not None:
            self.lease = new
        if back is None:
            return None
        yield self.wait(back)
        return new

    def _perform(self, name: str, state: core.AgentState, action: core.Action, me: core.Member, at: int) -> Gen:
        s = self.servers[name]
        if isinstance(action, core.Renew | core.Acquire):
            won = yield from self._take(name, at, renewal=isinstance(action, core.Renew), lsn=me.lsn,
                                        timeline=me.timeline)
            if won is None:
                return state
            state = core.renewed(state, at)
            if isinstance(action, core.Acquire):
                self.event(name, "acquired")
                if action.promote and s.role == "replica" and not s.dead:
                    yield self.wait(self.setup.promote_ms * US_PER_MS)
                    if s.role == "replica" and not s.dead:
                        self.promote(s)
                        again = self.now
                        if (yield from self._take(name, again, renewal=True, lsn=self.lsn(s),
                                                  timeline=s.timeline)) is not None:
                            state = core.renewed(state, again)
        elif isinstance(action, core.Fence):
            if me.role == "primary" and not s.dead and not s.paused:
                s.read_only = True
                self.event(name, "fenced")
            else:  # it does not answer: stop it, as Patroni's watchdog resets the node
                self.kill(name)
                self.event(name, "fenced (stopped)")
            self.end_sessions(name)
        elif isinstance(action, core.Unfence):
            s.read_only = False
            self.event(name, "unfenced")
        elif isinstance(action, core.Follow):
            state = yield from self._follow(name, state, action, me)
        return state

    def _follow(self, name: str, state: core.AgentState, action: core.Follow, me: core.Member) -> Gen:
        s, leader = self.servers[name], self.servers[action.leader]
        if me.role == "replica":
            if s.following != leader.name:
                s.following, s.log, s.stream_ok = leader.name, list(leader.log), True
                self.event(name, "following")
            return state
        if me.role == "down" and not s.dead and not self.policy.fencing:
            return state  # without fencing nobody stops a server that runs but is out of reach
        seen, took, _ = self.status(name, leader.name)
        yield self.wait(took)
        if seen.role != "primary":
            return state  # the new leader has not promoted yet
        self.kill(name)  # stop it (it may run: a demoted primary), then rewind if needed and start
        yield self.wait(self.setup.rejoin_s * US_PER_S)
        self.rejoin(s, leader)
        return core.AgentState(name)

    # --- the clients -----------------------------------------------------------------------------
    def arrivals(self, from_us: int, until_us: int) -> Gen:
        """Writes as a Poisson process at `rate` from `from_us` to `until_us`, each from a pool picked at random
        (a pool that was just refused rests `retry_pause_ms`, as a writer would)."""
        if self.rate <= 0:
            return
        yield self.wait(from_us - self.now)
        while True:
            yield self.wait(self.rng.expovariate(self.rate) * US_PER_S)
            if self.now >= until_us:
                return
            self._writes += 1
            pool = self.pools[self.rng.randrange(len(self.pools))]
            if self.now >= pool.resting_until_us:
                self.env.process(pool.write(f"{pool.name}-{self._writes}"))

    def start(self, from_us: int, until_us: int) -> None:
        for n in self.names:
            self.env.process(self.agent(n))
        self.env.process(self.arrivals(from_us, until_us))

    def primary(self) -> Server | None:
        """The server the run reads the survivors back from: the lease holder if it is a primary."""
        holder = self.lease.holder
        s = self.servers.get(holder) if holder else None
        if s is not None and s.role == "primary" and not s.dead:
            return s
        return next((x for x in self.servers.values() if x.role == "primary" and not x.dead), None)


class Pool:
    """reference_impl/failover/pool.py's PrimaryPool on a host: it finds the first member that is a primary
    and not read-only, writes there, and drops it on any error so the next write looks again."""

    def __init__(self, lab: Lab, name: str, host: str) -> None:
        self.lab, self.name, self.host = lab, name, host
        self.primary: str | None = None
        self._looking: simpy.Event | None = None
        self.resting_until_us = 0

    def _find(self) -> Gen:
        """The first member that answers as a writable primary (None: none does), probing all at once."""
        lab = self.lab
        if self._looking is not None:
            yield self._looking
            return self.primary
        looking = self._looking = lab.env.event()
        timeout = lab.setup.client_timeout_s * US_PER_S
        answers = []
        for n in lab.names:
            rtt, s = lab.rtt_us(self.host, n), lab.servers[n]
            if rtt is None or s.paused or rtt > timeout:
                answers.append((timeout, False))
            else:
                answers.append((rtt, not s.dead and s.role == "primary" and not s.read_only))
        yield lab.wait(max(t for t, _ in answers))
        self.primary = next((n for n, (_, ok) in zip(lab.names, answers, strict=True) if ok), None)
        self._looking = None
        looking.succeed()
        return self.primary

    def write(self, wid: str) -> Gen:
        """One write, recorded Jepsen's way: `ok` with the server that took it, `fail` when it certainly did
        not happen (no primary found, read-only), `info` when the answer never came."""
        lab = self.lab
        op = lab.history.invoke("write", {"id": wid}, process=self.name, time_us=lab.now)
        started = lab.now
        target = self.primary or (yield from self._find())
        if target is None:
            lab.history.complete(op, "fail", {"error": "no writable primary"}, time_us=lab.now)
            self.resting_until_us = lab.now + round(lab.setup.retry_pause_ms * US_PER_MS)
            return
        deadline = lab.now + round(lab.setup.client_timeout_s * US_PER_S)  # the statement's own timeout
        answer = "noreply"
        there = lab.one_way_us(self.host, target)
        if there is not None and lab.now < deadline:
            served = lab.env.process(lab.write(target, wid, there))
            yield served | lab.wait(deadline - lab.now)
            if served.triggered:
                answer = served.value
                back = lab.one_way_us(target, self.host)
                if back is None or lab.now + back > deadline:
                    answer = "noreply"
                else:
                    yield lab.wait(back)
        if answer == "noreply" and lab.now < deadline:
            yield lab.wait(deadline - lab.now)
        if answer == "ok":
            lab.history.complete(op, "ok", {"server": target}, time_us=lab.now)
            lab.write_latency.record_us(lab.now - started)
            if lab.rng.random() < lab.setup.probe_share:
                yield from self.read_back(wid)
            return
        self.primary = None
        if answer == "readonly":
            lab.history.complete(op, "fail", {"error": f"{target} is read-only"}, time_us=lab.now)
            self.resting_until_us = lab.now + round(lab.setup.retry_pause_ms * US_PER_MS)
        else:
            lab.history.complete(op, "info", {"error": f"{target}: no answer"}, time_us=lab.now)

    def read_back(self, wid: str) -> Gen:
        """The read-your-writes probe: read the write just acknowledged from the primary the pool finds."""
        lab = self.lab
        op = lab.history.invoke("read", {"id": wid}, process=self.name, time_us=lab.now)
        target = self.primary or (yield from self._find())
        rtt = lab.rtt_us(self.host, target) if target else None
        s = lab.servers[target] if target else None
        if rtt is None or s is None or s.dead or s.paused:
            if rtt is not None:
                yield lab.wait(rtt)
            lab.history.complete(op, "fail", {"error": "no primary to read from"}, time_us=lab.now)
            return
        yield lab.wait(rtt)
        lab.history.complete(op, "ok", {"found": wid in s.log, "server": target}, time_us=lab.now)
