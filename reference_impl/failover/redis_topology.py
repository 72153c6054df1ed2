"""The `redis` part of `GET /admin/topology` (docs/contract.md "Failover"): Sentinel's view of the master.

With `SAASLAB_REDIS_SENTINELS` set, the first Sentinel that answers is asked for the master that
`SAASLAB_REDIS_MASTER_NAME` names (SENTINEL MASTER), its replicas (SENTINEL REPLICAS) and the other
Sentinels watching it (SENTINEL SENTINELS); the answering Sentinel is listed with them. A replica or
Sentinel that Sentinel holds for down or disconnected is left out. Without Sentinels the service uses
one Redis, `SAASLAB_REDIS_URL`'s server, which is then the master with no replicas and no Sentinels.
Each server is named `host:port` (a unix socket by its path); nothing of the URL's credentials shows.
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

from saaslab.settings import Settings, sentinel_addresses

TIMEOUT_S = 1.0
DOWN_FLAGS = frozenset({"s_down", "o_down", "disconnected"})


async def redis_topology(settings: Settings) -> dict[str, Any]:
    """`{"master", "replicas": [...], "sentinels": [...]}`; master None when no Sentinel answers."""
    sentinels = sentinel_addresses(settings.redis_sentinels)
    if not sentinels:
        return {"master": _configured(settings.redis_url), "replicas": [], "sentinels": []}
    for host, port in sentinels:
        with contextlib.suppress(RedisError, OSError):
            return await _ask(host, port, settings.redis_master_name)
    return {"master": None, "replicas": [], "sentinels": []}


def _configured(url: str | None) -> str | None:
    if not url:
        return None
    options = parse_url(url)
    if "path" in options:
        return str(options["path"])
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"


async def _ask(host: str, port: int, name: str) -> dict[str, Any]:
    sentinel = Redis(host=host, port=port, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, decode_responses=True)
    try:
        master = await sentinel.sentinel_master(name)
        replicas = await sentinel.sentinel_slaves(name)
        others = await sentinel.sentinel_sentinels(name)
    finally:
        await sentinel.aclose()
    return {"master": None if _down(master) else _endpoint(master),
            "replicas": sorted(_endpoint(r) for r in replicas if not _down(r)),
            "sentinels": sorted([f"{host}:{port}", *(_endpoint(s) for s in others if not _down(s))])}


def _endpoint(server: dict[str, Any]) -> str:
    return f"{server['ip']}:{server['port']}"


def _down(server: dict[str, Any]) -> bool:
    # redis-py parses SENTINEL MASTER's flags into booleans (is_sdown, ...) and keeps the raw `flags` text.
    return bool(DOWN_FLAGS & set(str(server.get("flags", "")).split(",")))
