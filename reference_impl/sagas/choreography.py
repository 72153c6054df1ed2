"""The `choreography` design: no coordinator; each participant reacts to the events of the others.

An event carries the saga's whole state (core.SagaState) after one participant's work: the saga is
core.py's step machine, handed from participant to participant. The participant that owns the
machine's next command (its step's participant) runs it, with the machine's retries and timeouts,
until the command belongs to someone else or the saga is over, then publishes the new state:

    order placed (main database's outbox) -> inventory reserves -> payments charges
    -> shipping schedules -> inventory commits -> completed
    a refusal or a give-up -> the compensations, by events, in reverse: cancel, refund, release

Each participant publishes through its database's transactional outbox (choreography.sql): the
event row commits in the same local transaction as the effect it announces, with the delivery's
inbox row beside it. (Payments charges through the lab's provider in transactions of its own, so
there the outbox row commits just after the effect; a crash in between is redelivered, and the
charge, idempotent by its step key, answers as before.) The relay (relay.py) publishes outboxes to
a Redis stream; every consumer group reads every event: `inventory`, `payments`, `shipping`, and
`orders`, which keeps `sagas.orders` current (status and steps) from the events, newest first by
the event's `seq`.

Delivery is at least once: an event is acknowledged (XACK) once handled; a consumer that dies leaves
it pending, and it is reclaimed after `saga_visibility_timeout_s` (XAUTOCLAIM), or at once when the
same consumer (host and pid) comes back; a delivery that fails `saga_dead_letter_attempts` times
goes to the dead-letter stream, from which it can be replayed (relay.py). Duplicates, replays and
reordered deliveries are harmless: a delivery whose inbox row exists is only acknowledged, two
handlers of one event write the same next event id (the outbox refuses the second), every
participant operation is idempotent by its step key, and the order tracker ignores older states.

`recover` relays what is unsent, takes its own pending deliveries back and reclaims the timed-out
ones; with `open` a pump keeps doing that in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from redis.asyncio import Redis

from reference_impl.common.db import Pool, migrate
from reference_impl.common.redis_client import make_redis
from reference_impl.sagas import participants as parts
from reference_impl.sagas.core import (
    CHECKOUT,
    FAULT_POINTS,
    Finished,
    Order,
    Outcome,
    Participant,
    SagaState,
    Undo,
    Wait,
    apply,
    fault_point,
    next_command,
    start,
    step_key,
    step_views,
)
from reference_impl.sagas.designs import SagaDeps, SimulatedCrash
from reference_impl.sagas.orchestration import provider_fault
from reference_impl.sagas.orders import OrderRecord
from reference_impl.sagas.relay import (
    SCHEMA,
    Relay,
    add_event,
    dead_letter,
    ensure_group,
    events_stream,
    fields_of,
    text,
)
from reference_impl.sagas.tasks import TaskSet, wall_clock_us

log = logging.getLogger("saaslab.sagas.choreography")
DELIVER_POINT = "sagas.stream.deliver"
assert DELIVER_POINT in FAULT_POINTS
ORDERS = "orders"
GROUPS: tuple[str, ...] = ("inventory", "payments", "shipping", ORDERS)
US = 1_000_000
IDLE_POLL_S = 0.05
"""How long the pump waits when there was nothing to do (a publish in this process wakes it at once)."""


def owner(state: SagaState) -> Participant | None:
    """The participant whose turn it is; None once the saga is over."""
    return None if state.terminal else CHECKOUT[state.cursor].participant


def event_type(state: SagaState) -> str:
    """A readable name for what an event announces (the state says everything; this is for people)."""
    if state.terminal:
        return f"saga.{state.phase}"
    step = CHECKOUT[state.cursor]
    return f"{step.name}.{'requested' if state.phase == 'running' else 'undo.requested'}"


def next_event(previous: dict[str, Any], state: SagaState, by: str) -> dict[str, Any]:
    seq = previous["seq"] + 1
    return {"event_id": f"{previous['saga_id']}:{seq}", "saga_id": previous["saga_id"], "seq": seq,
            "type": event_type(state), "by": by, "order": previous["order"], "state": state.to_dict()}


async def _local(step_name: str, undo: bool, conn: asyncpg.Connection, order: Order) -> Outcome:
    """An inventory or shipping operation inside the caller's transaction."""
    key = step_key(order.id, step_name)
    if undo:
        await {"reserve": parts.release, "schedule": parts.cancel}[step_name](conn, order, key)
        return "ok"
    if step_name == "reserve":
        return await parts.reserve(conn, order, key)
    if step_name == "schedule":
        return await parts.schedule(conn, order, key)
    if step_name == "commit":
        return await parts.commit(conn, order, step_key(order.id, "reserve"))
    raise KeyError(f"no local action for step {step_name!r}")


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


class _Handled(Exception):
    """This delivery was handled already (its inbox row exists): roll back and acknowledge."""


class Choreography:
    name = "choreography"

    def __init__(self, deps: SagaDeps, *, clock: Callable[[], int] = wall_clock_us) -> None:
        self.deps = deps
        self.clock = clock
        settings = deps.settings
        self._own_redis = deps.redis is None
        self.redis: Redis = deps.redis if deps.redis is not None else make_redis(settings)
        self.prefix = settings.redis_prefix
        self.stream = events_stream(self.prefix)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self.visibility_ms = round(settings.saga_visibility_timeout_s * 1000)
        self.dead_after = settings.saga_dead_letter_attempts
        self.relay = Relay(self.redis, self.prefix, deps.faults)
        self.tasks = TaskSet()
        self.resumed = 0
        """Deliveries taken back from a dead or silent consumer (a metric)."""
        self.dead_lettered = 0
        # Handlers wait for a slot rather than for a pool connection, where a step's timeout would run out.
        self._slots = {p: asyncio.Semaphore(max(1, settings.db_pool_max // 2)) for p in GROUPS}
        self._errors: dict[tuple[str, str], str] = {}
        self._wake = asyncio.Event()
        self._progress = 0
        """Bumped by every relayed row and acknowledged delivery (see `_settled`)."""
        self._ready_done = False
        self._own_pending_taken = False
        self._forever = False

    @property
    def _pools(self) -> dict[str, Pool]:
        return {ORDERS: self.deps.pool, **self.deps.participants.pools}

    async def _ready(self) -> None:
        if not self._ready_done:
            for pool in self._pools.values():
                await migrate(pool, [SCHEMA])
            for group in GROUPS:
                await ensure_group(self.redis, self.stream, group)
            self._ready_done = True

    # -- the design interface (designs.py) ------------------------------------------------------------

    async def open(self) -> None:
        self._forever = True  # from now on the pump runs for the life of the instance
        await self.recover()

    async def close(self) -> None:
        self._forever = False
        await self.tasks.close()
        if self._own_redis:
            await self.redis.aclose()

    async def start(self, order: Order, key: str, now_us: int) -> OrderRecord:
        await self._ready()
        state = start(order.id, now_us)
        async with self.deps.pool.connection() as conn, conn.transaction():
            record, created = await self.deps.orders.create(order, key, self.name, step_views(state), {"seq": 0},
                                                            now_us, conn=conn)
            if created:
                await add_event(conn, {"event_id": f"{order.id}:0", "saga_id": order.id, "seq": 0,
                                       "type": "checkout.requested", "by": ORDERS, "order": order.to_dict(),
                                       "state": state.to_dict()})
        if created:
            self._kick()
        return record

    async def recover(self) -> int:
        await self._ready()
        resumed = 0
        if not self._own_pending_taken:  # a restart of this consumer: its deliveries in flight died with it
            self._own_pending_taken = True
            for group in GROUPS:
                reply = await self.redis.xreadgroup(group, self.consumer, {self.stream: "0"}, count=1000)
                entries = reply[0][1] if reply else []
                resumed += await self._take(group, entries, reclaimed=True)
        self.resumed += resumed
        self._kick()
        return resumed

    async def settle(self, timeout_s: float) -> bool:
        """Wait until every outbox is relayed and every delivery acknowledged or dead-lettered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.tasks.crashed is not None:
                return True
            if await self._settled():
                return True
            self._kick()
            await asyncio.sleep(0.02)
        return False

    # -- the pump: relay, read, reclaim ---------------------------------------------------------------

    def _kick(self) -> None:
        self._wake.set()
        if "pump" not in self.tasks:
            self.tasks.spawn("pump", self._pump())

    def _handlers(self) -> list[str]:
        return [name for name in self.tasks.tasks if name != "pump"]

    async def _pump(self) -> None:
        """Relay and deliver until everything is quiet (or, once `open`, for ever)."""
        while True:
            try:
                busy = await self._round()
            except (SimulatedCrash, asyncio.CancelledError):
                raise
            except Exception as exc:  # Redis or a database is down: try again shortly
                log.warning("choreography pump: %r", exc)
                busy = False
            if busy:
                continue
            if not self._forever and await self._settled():
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()

    async def _round(self) -> bool:
        """Relay every outbox, then hand new and timed-out deliveries to handlers; True if anything moved."""
        moved = 0
        for pool in self._pools.values():
            moved += await self.relay.relay(pool)
        self._progress += moved
        for group in GROUPS:
            reply = await self.redis.xreadgroup(group, self.consumer, {self.stream: ">"}, count=100)
            moved += await self._take(group, reply[0][1] if reply else [], reclaimed=False)
            claimed = await self.redis.xautoclaim(self.stream, group, self.consumer, self.visibility_ms,
                                                  start_id="0-0", count=100)
            taken = await self._take(group, claimed[1], reclaimed=True)
            self.resumed += taken
            moved += taken
        return moved > 0

    async def _settled(self) -> bool:
        """No handler running here and nothing in flight anywhere, with no progress here while looking: a
        handler may commit its next event and acknowledge its delivery between the two halves of `_quiet`."""
        progress = self._progress
        return not self._handlers() and await self._quiet() and progress == self._progress and not self._handlers()

    async def _quiet(self) -> bool:
        for pool in self._pools.values():
            if await Relay.unsent(pool):
                return False
        # Lag from the ids: XINFO's own `lag` is unknown (nil) for a group created on a non-empty stream.
        last = _stream_id(text((await self.redis.xinfo_stream(self.stream))["last-generated-id"]))
        for info in await self.redis.xinfo_groups(self.stream):
            if text(info["name"]) in GROUPS and (
                    info["pending"] or _stream_id(text(info["last-delivered-id"])) < last):
                return False
        return True

    async def _take(self, group: str, entries: list[Any], *, reclaimed: bool) -> int:
        """Start a handler per delivery not already being handled here; dead-letter the worn-out ones."""
        entries = [(text(i), fields_of(f)) for i, f in entries if f]  # an entry deleted since has no fields
        entries = [(i, f) for i, f in entries if f"{group}/{i}" not in self.tasks]
        deliveries: dict[str, int] = {}
        if reclaimed and entries:
            pending = await self.redis.xpending_range(self.stream, group, min=entries[0][0], max=entries[-1][0],
                                                      count=len(entries) + 100)
            deliveries = {text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        for entry_id, fields in entries:
            if deliveries.get(entry_id, 1) > self.dead_after:
                error = self._errors.pop((group, entry_id), "unknown (the consumer died or went silent)")
                await dead_letter(self.redis, self.prefix, group, entry_id, fields.get("event", ""),
                                  deliveries[entry_id] - 1, error)
                self.dead_lettered += 1
                log.warning("saga event %s dead-lettered for %s after %d deliveries: %s", entry_id, group,
                            deliveries[entry_id] - 1, error)
                continue
            self.tasks.spawn(f"{group}/{entry_id}", self._deliver(group, entry_id, fields))
        return len(entries)

    # -- one delivery ---------------------------------------------------------------------------------

    async def _deliver(self, group: str, entry_id: str, fields: dict[str, str]) -> None:
        try:
            await self.deps.faults.before(DELIVER_POINT)
            if fields.get("only", group) == group:
                event = json.loads(fields["event"])
                if group == ORDERS:
                    await self._track(event)
                else:
                    await self._react(group, event)  # type: ignore[arg-type]
        except Exception as exc:  # left pending: reclaimed after the visibility timeout, or dead-lettered
            self._errors[(group, entry_id)] = repr(exc)
            log.info("saga event %s for %s failed: %r", entry_id, group, exc)
            return
        await self.redis.xack(self.stream, group, entry_id)
        self._progress += 1
        log.debug("saga event %s for %s handled: %s", entry_id, group, fields.get("event", "")[:80])
        self._errors.pop((group, entry_id), None)
        self._wake.set()

    async def _react(self, participant: Participant, event: dict[str, Any]) -> None:
        """Run the machine while its commands are this participant's, then publish the state it reached."""
        state = SagaState.from_dict(event["state"])
        order = Order.from_dict(event["order"])
        while owner(state) == participant:
            command = next_command(state, self.clock())
            if isinstance(command, Finished):
                return
            if isinstance(command, Wait):
                await asyncio.sleep(max(0, command.until_us - self.clock()) / US)
                continue
            try:
                async with self._slots[participant]:
                    state = await self._attempt(participant, command.step.name, isinstance(command, Undo), order,
                                                state, event)
            except _Handled:
                return

    async def _attempt(self, participant: Participant, step_name: str, undo: bool, order: Order, state: SagaState,
                       event: dict[str, Any]) -> SagaState:
        """One attempt of the current command, its effect committed with the inbox row and the next event
        when the turn passes to another participant (or the saga ends)."""
        step = CHECKOUT[state.cursor]
        before, after = fault_point(step, "before", undo=undo), fault_point(step, "after", undo=undo)
        try:
            async with asyncio.timeout(self.deps.policy.timeout_us(step) / US):
                await self.deps.faults.before(before)
                if participant == "payments":
                    if undo:
                        await self.deps.participants.compensate(step, order)
                        result: Outcome = "ok"
                    else:
                        result = await self.deps.participants.act(step, order, fault=provider_fault(self.deps, step))
                    new = apply(state, result, self.clock(), self.deps.policy)
                    async with self._pools[participant].connection() as conn, conn.transaction():
                        await self._publish(conn, participant, event, new)
                else:
                    async with self._pools[participant].connection() as conn, conn.transaction():
                        result = await _local(step_name, undo, conn, order)
                        new = apply(state, result, self.clock(), self.deps.policy)
                        await self._publish(conn, participant, event, new)
            await self.deps.faults.before(after)  # a crash, error or delay after the effect
            self.deps.faults.after(after)
        except _Handled:
            raise
        except TimeoutError:
            return apply(state, "timeout", self.clock(), self.deps.policy)
        except Exception as exc:
            log.info("saga %s: %s%s failed: %r", order.id, step_name, " (undo)" if undo else "", exc)
            status = getattr(exc, "status", None)
            return apply(state, "timeout" if status == 504 else "error", self.clock(), self.deps.policy)
        return new

    async def _publish(self, conn: asyncpg.Connection, participant: Participant, event: dict[str, Any],
                       new: SagaState) -> None:
        """Inside the effect's transaction: if the turn passes on, record the delivery in the inbox and the
        next event in the outbox; `_Handled` if this delivery (or its twin) was handled already."""
        if owner(new) == participant:
            return
        if not await conn.fetchval("INSERT INTO saga_events.inbox (consumer, event_id, saga_id) VALUES ($1, $2, $3)"
                                   " ON CONFLICT DO NOTHING RETURNING true", participant, event["event_id"],
                                   event["saga_id"]):
            raise _Handled
        if not await add_event(conn, next_event(event, new, participant)):
            raise _Handled

    async def _track(self, event: dict[str, Any]) -> None:
        """The order tracker: `sagas.orders` follows the newest state the events announced."""
        while True:
            record = await self.deps.orders.load(event["saga_id"])
            if record is None:
                raise LookupError(f"no order {event['saga_id']!r} for event {event['event_id']!r}")
            if event["seq"] <= (record.state or {}).get("seq", -1):
                return
            state = SagaState.from_dict(event["state"])
            if await self.deps.orders.save(record.id, record.version, state.status, step_views(state),
                                           {"seq": event["seq"]}, 0, state.finished_us) is not None:
                return
