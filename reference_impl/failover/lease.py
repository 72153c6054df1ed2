"""The leader lease in Redis: the lab's Redis outlives any PostgreSQL member, so it can say who leads.

Patroni keeps its leader key in etcd, Consul or ZooKeeper; the lab's shared Redis plays that part
(a single server, so unlike etcd it is itself a single point of failure: the drills fault the
PostgreSQL members, never it). The decision is `reference_impl/failover/core.py`'s `acquire` and
`renew`; Redis only makes it atomic: WATCH the key, read it, decide, write in MULTI/EXEC, so two
candidates cannot both win a term. Every agent passes the same clock (this host's), which is why the
lease's expiry is kept as a number in the hash and not as a Redis TTL.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from reference_impl.failover import core

FIELDS = ("holder", "expires_us", "term", "leader_lsn", "timeline")


class LeaseStore:
    def __init__(self, client: aioredis.Redis, key: str, ttl_us: int) -> None:
        self.client = client
        self.key = key
        self.ttl_us = ttl_us

    async def read(self) -> core.Lease:
        raw = await self.client.hgetall(self.key)
        return _lease(raw)

    async def take(self, node: str, now_us: int, *, renewal: bool, lsn: int, timeline: int) -> core.Lease | None:
        """Acquire or renew for `node` as core decides, atomically; None when it may not."""
        decide = core.renew if renewal else core.acquire
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.key)
                current = _lease(await pipe.hgetall(self.key))
                new = decide(current, node, now_us, self.ttl_us, lsn=lsn, timeline=timeline)
                if new is None:
                    return None
                pipe.multi()
                pipe.hset(self.key, mapping={"holder": new.holder or "", "expires_us": new.expires_us,
                                             "term": new.term, "leader_lsn": new.leader_lsn,
                                             "timeline": new.timeline})
                await pipe.execute()
                return new
            except WatchError:
                return None

    async def clear(self) -> None:
        await self.client.delete(self.key)


def _lease(raw: dict) -> core.Lease:
    if not raw:
        return core.FREE
    get = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in raw.items()}
    return core.Lease(get.get("holder") or None, int(get.get("expires_us", 0)), int(get.get("term", 0)),
                      int(get.get("leader_lsn", 0)), int(get.get("timeline", 1)))


__all__ = ["LeaseStore", "RedisError"]
