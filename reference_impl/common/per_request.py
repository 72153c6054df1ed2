"""The single Redis round trip of a /v1 request (DESIGN.md: at most one for all per-request patterns).

Today it meters usage; per-request patterns added later (rate limiting) join the same Lua script
and extend `Admission`, rather than adding round trips.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from reference_impl.tenancy.core import usage_key, usage_period

SCRIPT = (Path(__file__).parent / "per_request.lua").read_text()
# Usage counters outlive their month long enough to bill it afterwards.
USAGE_TTL_S = 62 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Admission:
    period: str
    requests: int


class PerRequest:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._script = redis.register_script(SCRIPT)
        self._prefix = prefix
        self._period = ""
        self._period_ends = 0.0

    def _current_period(self) -> str:
        now = time.time()
        if now >= self._period_ends:  # formatted once a month, not per request
            self._period = usage_period(now)
            year, month = time.gmtime(now)[:2]
            self._period_ends = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
        return self._period

    async def admit(self, tenant_id: str) -> Admission:
        period = self._current_period()
        used = await self._script(keys=[usage_key(self._prefix, tenant_id, period)], args=[USAGE_TTL_S])
        return Admission(period, int(used))
