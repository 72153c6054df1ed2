"""choreography's plumbing: the transactional outbox (choreography.sql), the relay that publishes it to a
Redis stream, and the dead-letter stream with its replay (a function and two admin routes).

Keys carry the settings' `redis_prefix` and one hash tag, `{sagas}`, for the events stream and its
dead-letter stream, since moving an entry between them is one MULTI over both (one Redis Cluster
slot). A saga's events form a chain (each follows from the one before, choreography.py), so
ordering holds per saga without a partition per saga; one stream keeps the consumers' reads to one
call per group.

Every consumer group reads every event (the participants and the order tracker each take what is
theirs): at least once, acknowledged with XACK once handled; an entry left unacknowledged is
reclaimed (XAUTOCLAIM) after the visibility timeout, and one delivered `saga_dead_letter_attempts`
times without success goes to the dead-letter stream with its group and last error. Replaying a
dead letter publishes its event again for that group alone and deletes the dead letter.

Lab-mode faults on the relay: `sagas.relay.before` (error, delay: a delayed delivery, crash),
`sagas.relay.after` (after the XADD, before the row is marked sent: a crash there publishes the
event again), `sagas.stream.duplicate` (published twice) and `sagas.stream.reorder` (published
after the rest of its batch).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from reference_impl.common.db import Pool
from reference_impl.common.problem import PROBLEM_RESPONSES, Problem
from reference_impl.sagas.core import FAULT_POINTS
from reference_impl.sagas.designs import FaultHooks

SCHEMA = Path(__file__).with_name("choreography.sql")
RELAY_BEFORE, RELAY_AFTER = "sagas.relay.before", "sagas.relay.after"
DUPLICATE, REORDER = "sagas.stream.duplicate", "sagas.stream.reorder"
assert {RELAY_BEFORE, RELAY_AFTER, DUPLICATE, REORDER} <= FAULT_POINTS.keys()
BATCH = 100


def events_stream(prefix: str) -> str:
    return f"{prefix}:{{sagas}}:events"


def dead_stream(prefix: str) -> str:
    return f"{prefix}:{{sagas}}:dead"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def fields_of(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


async def add_event(conn: asyncpg.Connection, event: dict[str, Any]) -> bool:
    """Write `event` to the outbox inside the caller's transaction; False if its id is there already."""
    return bool(await conn.fetchval(
        "INSERT INTO saga_events.outbox (event_id, saga_id, body) VALUES ($1, $2, $3::jsonb)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING true", event["event_id"], event["saga_id"], json.dumps(event)))


def _fires(faults: FaultHooks, point: str) -> bool:
    """Whether a fault armed at `point` fires; the lab's `Faults.take` (a test's hooks may not have one)."""
    take = getattr(faults, "take", None)
    return take is not None and take(point) is not None


class Relay:
    """Publishes each outbox's unsent rows to the events stream, then marks them sent."""

    def __init__(self, redis: Redis, prefix: str, faults: FaultHooks) -> None:
        self.redis = redis
        self.stream = events_stream(prefix)
        self.faults = faults
        self.published = 0
        """Stream entries written (duplicates included): the messages a saga costs."""

    async def relay(self, pool: Pool) -> int:
        """One batch of `pool`'s outbox; returns how many rows it sent. Rows are locked while they are
        published (SKIP LOCKED: relays of other workers take other rows), so each is sent by one relay
        at a time; a crash before the mark publishes it again (at least once)."""
        async with pool.connection() as conn, conn.transaction():
            rows = await conn.fetch("SELECT id, body FROM saga_events.outbox WHERE sent_at IS NULL ORDER BY id"
                                    " LIMIT $1 FOR UPDATE SKIP LOCKED", BATCH)
            if not rows:
                return 0
            held = [r for r in rows if _fires(self.faults, REORDER)]
            for row in [r for r in rows if r not in held] + held:
                await self.faults.before(RELAY_BEFORE)
                for _ in range(2 if _fires(self.faults, DUPLICATE) else 1):
                    await self.redis.xadd(self.stream, {"event": row["body"]})
                    self.published += 1
                await self.faults.before(RELAY_AFTER)
                self.faults.after(RELAY_AFTER)
            await conn.execute("UPDATE saga_events.outbox SET sent_at = clock_timestamp() WHERE id = ANY($1::bigint[])",
                               [r["id"] for r in rows])
        return len(rows)

    @staticmethod
    async def unsent(pool: Pool) -> int:
        async with pool.connection() as conn:
            return await conn.fetchval("SELECT count(*) FROM saga_events.outbox WHERE sent_at IS NULL")


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """The consumer group, reading the stream from its start (MKSTREAM: before anything was published)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# ---------------------------------------------------------------------------------------------
# Dead letters

@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    """Its id in the dead-letter stream: what `replay` takes."""
    group: str
    source_id: str
    """Its id in the events stream when it was given up on."""
    deliveries: int
    error: str
    event: dict[str, Any]


async def dead_letter(redis: Redis, prefix: str, group: str, entry_id: str, event: str, deliveries: int,
                      error: str) -> None:
    """Move one delivery of `group` to the dead-letter stream: add it there and acknowledge it, atomically."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(dead_stream(prefix), {"group": group, "source_id": entry_id, "deliveries": str(deliveries),
                                        "error": error[:500], "event": event})
        pipe.xack(events_stream(prefix), group, entry_id)
        await pipe.execute()


async def dead_letters(redis: Redis, prefix: str, *, count: int = 100) -> list[DeadLetter]:
    """The dead letters, oldest first."""
    out = []
    for entry_id, raw in await redis.xrange(dead_stream(prefix), count=count):
        f = fields_of(raw)
        out.append(DeadLetter(text(entry_id), f["group"], f["source_id"], int(f["deliveries"]), f["error"],
                              json.loads(f["event"])))
    return out


async def replay(redis: Redis, prefix: str, dead_id: str) -> str | None:
    """Publish a dead letter's event again, for its group alone, and delete the dead letter; the new
    entry's id, or None if there is no such dead letter."""
    found = await redis.xrange(dead_stream(prefix), min=dead_id, max=dead_id)
    if not found:
        return None
    f = fields_of(found[0][1])
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(events_stream(prefix), {"event": f["event"], "only": f["group"]})
        pipe.xdel(dead_stream(prefix), dead_id)
        new_id, deleted = await pipe.execute()
    return text(new_id) if deleted else None


def dead_letter_router(redis: Callable[[], Redis], prefix: str,
                       require_admin: Callable[..., Awaitable[None]]) -> APIRouter:
    """`GET /admin/sagas/dead-letters` lists them; `POST /admin/sagas/dead-letters/{id}/replay` replays one."""
    router = APIRouter(prefix="/admin/sagas/dead-letters", tags=["admin"], dependencies=[Depends(require_admin)],
                       responses=PROBLEM_RESPONSES)

    @router.get("")
    async def list_dead_letters() -> dict[str, Any]:
        return {"items": [asdict(d) for d in await dead_letters(redis(), prefix)]}

    @router.post("/{dead_id}/replay")
    async def replay_dead_letter(dead_id: str) -> dict[str, Any]:
        if not _is_stream_id(dead_id):
            raise Problem(422, "invalid-dead-letter-id", f"{dead_id!r} is not a stream id (<ms>-<seq>).")
        new_id = await replay(redis(), prefix, dead_id)
        if new_id is None:
            raise Problem(404, "not-found", f"No dead letter {dead_id!r}.")
        return {"replayed": dead_id, "as": new_id}

    return router


def _is_stream_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and seq.isdigit() and len(value) <= 41
