"""Redis: one asyncio client per app, connected lazily, closed in the lifespan."""

from __future__ import annotations

from redis.asyncio import Redis

from saaslab.settings import Settings


def make_redis(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise ValueError("settings.redis_url is not set")
    # The socket timeouts bound how long a request can hang on a stalled Redis.
    return Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=2.0,
                          health_check_interval=0)
