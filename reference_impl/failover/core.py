"""Failover as pure code: timers, the failure detector, the leader lease, the leader decision, fencing.

No I/O and no clock of its own: the failover manager (reference_impl/failover/manager.py) runs it
against real PostgreSQL servers and a lease kept in Redis, the simulation (scenarios/failover.py)
against simulated ones, both with times in integer µs.

The scheme is Patroni's. Every member runs an agent beside its server; every `loop_wait` the agent
observes its own server, the lease and the other members, and `step` tells it what to do:

    state = AgentState(name)
    every loop_wait:
        obs = Observation(now_us, me=<my server>, lease=<read from the store, None if unreachable>,
                          peers=<the members I can reach>)
        state, actions = step(state, obs, policy)
        <perform the actions in order; report a successful Renew/Acquire with `renewed(state, at_us)`>

* **The lease** (`Lease`) is the leader key: a holder, an expiry on the store's clock and a term
  that grows with every new holder (a fencing token). Only the holder renews it; anyone may take it
  once it has expired; nobody promotes while it is held by someone else (`held_by`).
* **Patroni's rule:** `loop_wait + 2 * retry_timeout <= ttl` (`Timers.validate`). The leader renews
  every `loop_wait`; if a renewal has not succeeded by `loop_wait + retry_timeout` after the last
  good one (`fence_deadline_us`), it fences itself, and still has `retry_timeout` of margin before
  its lease can lapse and another member may take it.
* **Fencing** (`Policy.fencing`): a primary whose own lease lapses stops taking writes, and one that
  sees another holder demotes. The unsafe design turns fencing off, as repmgr without a fencing
  script: an old primary that was paused or cut off comes back still a primary and keeps taking
  writes until an operator rejoins it.
* **The leader decision** (`choose_leader`): among the members seen, the most advanced replica by
  LSN, within `max_lag_bytes` of the last position the leader published; with synchronous
  replication, only when enough replicas answer that every acknowledged commit is on one of them.
* **Rejoining** (`needs_rewind`): a member on an older timeline that wrote past the point where the
  new timeline forked must be rewound (pg_rewind) before it can follow; otherwise it just follows.

Timer presets (`PRESETS`) are the defaults of Patroni, repmgr and Redis Sentinel, and the lab's
short ones, so the simulation compares them and the drills run the lab's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

US_PER_MS = 1_000
US_PER_S = 1_000_000

# ---------------------------------------------------------------------------------------------
# Timers


@dataclass(frozen=True, slots=True)
class Timers:
    """How fast a manager notices a dead leader. `ttl_us` is the lease (or detection timeout)."""

    name: str
    ttl_us: int
    loop_wait_us: int
    retry_timeout_us: int
    note: str = ""

    def validate(self) -> Timers:
        """Patroni's rule, so a leader fences itself before its lease can lapse; returns self."""
        if min(self.ttl_us, self.loop_wait_us, self.retry_timeout_us) <= 0:
            raise ValueError(f"timers {self.name!r}: ttl, loop_wait and retry_timeout must be positive")
        if self.loop_wait_us + 2 * self.retry_timeout_us > self.ttl_us:
            raise ValueError(
                f"timers {self.name!r}: loop_wait + 2*retry_timeout = "
                f"{(self.loop_wait_us + 2 * self.retry_timeout_us) / US_PER_S:g} s exceeds ttl = "
                f"{self.ttl_us / US_PER_S:g} s (Patroni's rule: loop_wait + 2*retry_timeout <= ttl)")
        return self

    def failover_bounds_us(self) -> tuple[int, int]:
        """Fault to promotion, best and worst case: the lease was renewed up to one loop before the
        fault, then lapses `ttl` after that renewal, and a replica notices within one more loop."""
        return self.ttl_us - self.loop_wait_us, self.ttl_us + self.loop_wait_us


def timers_s(name: str, ttl_s: float, loop_wait_s: float, retry_timeout_s: float, note: str = "") -> Timers:
    return Timers(name, round(ttl_s * US_PER_S), round(loop_wait_s * US_PER_S), round(retry_timeout_s * US_PER_S),
                  note).validate()


PRESETS: dict[str, Timers] = {t.name: t for t in (
    timers_s("patroni", 30, 10, 10, "Patroni's defaults: ttl 30 s, loop_wait 10 s, retry_timeout 10 s"),
    timers_s("repmgr", 60, 10, 10, "repmgr: 6 reconnect attempts x 10 s before failover; no lease, "
                                    "so nothing fences the old primary"),
    timers_s("sentinel", 30, 1, 1, "Redis Sentinel: down-after-milliseconds 30,000, a ping every second"),
    timers_s("lab", 3, 1, 1, "the lab's short timers, for drills that fit in a test"),
)}


# ---------------------------------------------------------------------------------------------
# The failure detector


Verdict = Literal["alive", "suspect", "dead"]


@dataclass(frozen=True, slots=True)
class Detector:
    """Heartbeats from one peer: suspect after a missed beat, dead after `timeout_us` of silence."""

    interval_us: int
    timeout_us: int
    last_heard_us: int

    def heard(self, now_us: int) -> Detector:
        return replace(self, last_heard_us=max(self.last_heard_us, now_us))

    def verdict(self, now_us: int) -> Verdict:
        silent = now_us - self.last_heard_us
        if silent >= self.timeout_us:
            return "dead"
        return "suspect" if silent > self.interval_us else "alive"


def quorum_agrees(verdicts: Iterable[Verdict], quorum: int) -> bool:
    """Sentinel's objective down: at least `quorum` observers find the master dead."""
    return sum(v == "dead" for v in verdicts) >= quorum


# ---------------------------------------------------------------------------------------------
# The lease


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader key as the store holds it. `leader_lsn`/`timeline` are what the holder published at
    its last renewal, as Patroni publishes its position, for the candidates' lag check."""

    holder: str | None
    expires_us: int
    term: int
    leader_lsn: int = 0
    timeline: int = 1


FREE = Lease(None, 0, 0)


def held_by(lease: Lease, now_us: int) -> str | None:
    """The live holder, or None when the lease is free or has lapsed."""
    return lease.holder if lease.holder is not None and now_us < lease.expires_us else None


def acquire(lease: Lease, node: str, now_us: int, ttl_us: int, *, lsn: int = 0, timeline: int = 1) -> Lease | None:
    """The lease `node` takes, with a new term, or None while someone else holds it. The store applies
    this as a compare-and-set on the term, so two candidates cannot both win."""
    current = held_by(lease, now_us)
    if current is not None and current != node:
        return None
    term = lease.term if current == node else lease.term + 1
    return Lease(node, now_us + ttl_us, term, lsn, timeline)


def renew(lease: Lease, node: str, now_us: int, ttl_us: int, *, lsn: int = 0, timeline: int = 1) -> Lease | None:
    """The renewed lease, or None when `node` no longer holds it (lapsed, or taken over)."""
    if held_by(lease, now_us) != node:
        return None
    return Lease(node, now_us + ttl_us, lease.term, lsn, timeline)


def fence_deadline_us(renewed_us: int, timers: Timers) -> int:
    """When a leader whose renewals keep failing must stop taking writes: one loop plus one retry
    timeout after its last good renewal, `retry_timeout` before the lease can lapse (Timers.validate)."""
    return renewed_us + timers.loop_wait_us + timers.retry_timeout_us


# ---------------------------------------------------------------------------------------------
# The leader decision


Role = Literal["primary", "replica", "down"]


@dataclass(frozen=True, slots=True)
class Member:
    """One server as an agent sees it: `lsn` is a primary's write position or a replica's received one."""

    name: str
    role: Role
    lsn: int = 0
    timeline: int = 1


def choose_leader(members: Sequence[Member], *, replicas_total: int, leader_lsn: int = 0,
                  max_lag_bytes: int | None = None, sync_standbys: int = 0) -> str | None:
    """The replica to promote, or None when no safe choice can be made from what was seen, or while a
    primary still answers (a fenced one should be reported `down`).

    The most advanced live replica by LSN (ties: the smaller name, so every agent picks the same one),
    refused when it lags `leader_lsn` by more than `max_lag_bytes` (Patroni's
    `maximum_lag_on_failover`). With `sync_standbys` = k synchronous standbys out of `replicas_total`,
    an acknowledged commit is on at least k replicas, so at least `replicas_total - k + 1` must answer
    for the most advanced of them to hold every acknowledged commit.
    """
    if any(m.role == "primary" for m in members):  # Patroni: never while a primary answers
        return None
    live = [m for m in members if m.role == "replica"]
    if sync_standbys and len(live) < replicas_total - sync_standbys + 1:
        return None
    if not live:
        return None
    best = max(live, key=lambda m: (m.timeline, m.lsn, _neg(m.name)))
    if max_lag_bytes is not None and leader_lsn - best.lsn > max_lag_bytes:
        return None
    return best.name


def _neg(name: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in name)


def needs_rewind(my_timeline: int, my_lsn: int | None, leader_timeline: int, fork_lsn: int | None) -> bool:
    """Whether a member must be rewound before it can follow the leader: it is on an older timeline and
    its WAL ends past the point where the leader's timeline forked from it (`fork_lsn`, from the
    leader's timeline history). An unknown end (`my_lsn` None: the member crashed) or fork forces one."""
    if my_timeline >= leader_timeline:
        return my_timeline != leader_timeline
    return fork_lsn is None or my_lsn is None or my_lsn > fork_lsn


# ---------------------------------------------------------------------------------------------
# The agent's step machine


@dataclass(frozen=True, slots=True)
class Policy:
    timers: Timers
    fencing: bool = True
    replicas_total: int = 1
    sync_standbys: int = 0
    max_lag_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    now_us: int
    me: Member
    lease: Lease | None
    """None: the store could not be reached this loop."""
    peers: tuple[Member, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentState:
    name: str
    renewed_us: int | None = None
    """When the last successful Renew/Acquire was sent (the store's expiry is at least ttl later)."""
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class Renew:
    pass


@dataclass(frozen=True, slots=True)
class Acquire:
    promote: bool
    """Promote this member's server once the lease is won (a replica becoming leader)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """Stop taking writes now: read-only if the server answers, else stop it (Patroni's watchdog)."""


@dataclass(frozen=True, slots=True)
class Unfence:
    """The leader's lease is back: take writes again."""


@dataclass(frozen=True, slots=True)
class Follow:
    leader: str
    rewind_if_diverged: bool
    """A demoted primary: check the timeline and rewind before following if it diverged."""


Action = Renew | Acquire | Fence | Unfence | Follow


def renewed(state: AgentState, at_us: int) -> AgentState:
    """Record a successful Renew or Acquire that was sent at `at_us`."""
    return replace(state, renewed_us=at_us)


def step(state: AgentState, obs: Observation, policy: Policy) -> tuple[AgentState, tuple[Action, ...]]:
    """One loop of one member's agent: what to do given what it observed.

    A member that led (it has a renewal on record) and is not a replica fences itself once its
    renewals are overdue, whether its server answers or not (a paused server is stopped, as Patroni's
    watchdog resets the node); a primary that sees another holder fences itself before following.
    """
    me, now = obs.me, obs.now_us
    holder = None if obs.lease is None else held_by(obs.lease, now)
    overdue = state.renewed_us is not None and now >= fence_deadline_us(state.renewed_us, policy.timers)
    someone_else = holder is not None and holder != me.name
    fence: tuple[Action, ...] = ()
    if policy.fencing and not state.fenced and me.role != "replica" and (
            overdue or (me.role == "primary" and (someone_else or (obs.lease is None and state.renewed_us is None)))):
        fence = (Fence(),)
        state = replace(state, fenced=True)
    if obs.lease is None:  # the store is out of reach: nothing can be decided, only fenced
        return state, fence
    if holder == me.name:
        if me.role == "primary":
            if state.fenced and not fence:
                return replace(state, fenced=False), (Renew(), Unfence())
            return state, (*fence, Renew())
        if me.role == "replica":  # won the lease on an earlier loop; promotion did not finish
            return state, (Acquire(promote=True),)
        return state, fence  # my server does not answer: let the lease lapse
    if someone_else:
        assert holder is not None
        if me.role == "replica":
            return replace(state, renewed_us=None, fenced=False), (Follow(holder, False),)
        if me.role == "primary" and not policy.fencing:
            return state, ()  # as repmgr: an old primary that came back stays one until an operator rejoins it
        return replace(state, renewed_us=None), (*fence, Follow(holder, True))
    # The lease is free or has lapsed.
    if me.role == "primary":
        return state, (*fence, Acquire(promote=False))
    if me.role == "replica":
        winner = choose_leader((me, *obs.peers), replicas_total=policy.replicas_total,
                               leader_lsn=obs.lease.leader_lsn, max_lag_bytes=policy.max_lag_bytes,
                               sync_standbys=policy.sync_standbys)
        if winner == me.name:
            return replace(state, fenced=False), (Acquire(promote=True),)
    return state, fence
