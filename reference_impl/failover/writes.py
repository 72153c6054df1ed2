"""The service's side of a failover: uniquely identified writes that follow the primary, and the topology.

`WriteLog` is the repository behind `POST /v1/failover/writes` and `GET /v1/failover/writes/{id}`
(reference_impl/failover/routes.py): each write is one row `(tenant_id, id)` in the members' `failover_writes`
table (reference_impl/failover/pgcluster.py), inserted through a `PrimaryPool` over the members
`SAASLAB_FAILOVER_MEMBERS` lists, so the service finds the new primary by itself after a failover. What a
caller learns is what the checker needs: the write is acknowledged with the server that took it, or it
raises `WriteRefused` (certainly not written) or `WriteUnknown` (it may have been), both carrying
`retry_after_s`; nothing else leaves it, so a request during the switch gets a 503, never a 500.
Without members it writes to the service's own database, one member called `main`.

`read_topology` answers `GET /admin/topology` (docs/contract.md "Failover"): from what the failover
manager's agents publish beside the lease (`<SAASLAB_FAILOVER_LEASE_KEY>:members`, reference_impl/failover/manager.py)
when the key is set, else by asking each member itself; its `redis` part is Sentinel's
(reference_impl/failover/redis_topology.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from reference_impl.failover.pgcluster import CREATE_TABLE_SQL, TABLE, status
from reference_impl.failover.pool import PrimaryPool, PrimaryUnavailable, WriteUnknown
from reference_impl.failover.redis_topology import redis_topology
from saaslab.patterns.failover import member_urls
from saaslab.settings import Settings

TIMEOUT_S = 1.0
"""A statement (a sync commit waiting for its standby included) or a connection that takes longer fails."""
RETRY_AFTER_S = 1
RECHECK_S = 0.2
"""After a search found no primary, requests are refused at once for this long rather than each searching."""
MAIN = "main"
INSERT_SQL = (f"INSERT INTO {TABLE} (tenant_id, id) VALUES ($1, $2) ON CONFLICT DO NOTHING "
              "RETURNING current_setting('cluster_name') AS server")
READ_SQL = f"SELECT current_setting('cluster_name') AS server, EXISTS (SELECT 1 FROM {TABLE} WHERE tenant_id = $1 AND id = $2) AS found"


def members_of(settings: Settings) -> dict[str, dict[str, Any]]:
    """asyncpg keywords per member: `SAASLAB_FAILOVER_MEMBERS`, else the service's own database."""
    urls = member_urls(settings.failover_members) or {MAIN: settings.database_url or ""}
    return {name: {"dsn": url} for name, url in urls.items()}


@dataclass(frozen=True, slots=True)
class Written:
    id: str
    server: str
    """The member that took the write (its `cluster_name`; `main`'s may be empty)."""
    created: bool
    """False: this tenant had written this id before (a retry of a write whose answer was lost)."""


class WriteLog:
    def __init__(self, members: Mapping[str, Mapping[str, Any]]) -> None:
        self.pool = PrimaryPool(members, timeout_s=TIMEOUT_S, retry_after_s=RETRY_AFTER_S, recheck_s=RECHECK_S)
        self._table_ready = False

    async def write(self, tenant_id: str, write_id: str) -> Written:
        if not self._table_ready:
            await self.write_table()
        rows, name = await self._fetch(INSERT_SQL, tenant_id, write_id)
        if rows:
            return Written(write_id, rows[0]["server"] or name, True)
        # Already there: say so, and who holds it now.
        found, server = await self.read(tenant_id, write_id)
        return Written(write_id, server, not found)

    async def read(self, tenant_id: str, write_id: str) -> tuple[bool, str]:
        """(whether `tenant_id` has the write, the server that answered); read on the primary, so a client
        reads its own acknowledged writes there, or learns it cannot now."""
        rows, name = await self._fetch(READ_SQL, tenant_id, write_id, write=False)
        return bool(rows and rows[0]["found"]), (rows[0]["server"] if rows else "") or name

    async def _fetch(self, sql: str, *args: Any, write: bool = True) -> tuple[list[Any], str]:
        try:
            return await self.pool.fetch(sql, *args, write=write)
        except PrimaryUnavailable:
            raise
        except Exception as err:  # anything else from the driver mid-switch: the outcome is unknown, not a 500
            self.pool.drop()
            raise WriteUnknown(f"{type(err).__name__} from the primary", RETRY_AFTER_S) from None

    async def write_table(self) -> None:
        """Create the writes' table where it is missing: the cluster's members have it from the start, the
        service's own database gets it here."""
        await self._fetch(CREATE_TABLE_SQL)
        self._table_ready = True

    async def close(self) -> None:
        await self.pool.close()


# ---------------------------------------------------------------------------------------------
# GET /admin/topology


async def read_topology(settings: Settings, redis: Redis, members: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """docs/contract.md "Failover": `{"postgres": {...}, "redis": {...}, "design": {...}}`."""
    published = await _published(redis, settings.failover_lease_key) if settings.failover_lease_key else {}
    if not published:
        published = await _asked(members)
    holder = await _holder(redis, settings.failover_lease_key) if settings.failover_lease_key else None
    writable = [n for n, m in sorted(published.items()) if m.get("role") == "primary" and not m.get("read_only")]
    primary = holder if holder in writable else next(iter(writable), None)
    timeline = published[primary].get("timeline") if primary else max(
        (int(m.get("timeline") or 1) for m in published.values() if m.get("role") != "down"), default=None)
    return {
        "postgres": {"primary": primary,
                     "replicas": sorted(n for n, m in published.items() if m.get("role") == "replica"),
                     "timeline": timeline,
                     "replication": "sync" if settings.failover == "sync" else "async"},
        "redis": await redis_topology(settings),
        "design": {"postgres": settings.failover, "redis": settings.failover_redis},
    }


async def _published(redis: Redis, lease_key: str) -> dict[str, dict[str, Any]]:
    raw = await redis.hgetall(f"{lease_key}:members")
    out = {}
    for k, v in raw.items():
        try:
            out[k.decode() if isinstance(k, bytes) else k] = json.loads(v)
        except ValueError:
            continue
    return out


async def _holder(redis: Redis, lease_key: str) -> str | None:
    holder = await redis.hget(lease_key, "holder")
    return (holder.decode() if isinstance(holder, bytes) else holder) or None


async def _asked(members: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    names = list(members)
    seen = await asyncio.gather(*(status(dict(members[n]), TIMEOUT_S) for n in names))
    return {n: {"role": s.role, "lsn": s.lsn, "timeline": s.timeline, "read_only": s.read_only}
            for n, s in zip(names, seen, strict=True)}
