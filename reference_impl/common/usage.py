"""A tenant's usage counter in Redis: its key and its metering period.

Shared by the per-request script (reference_impl/common/per_request.py) and the rate limiter's
scripts, which count usage in the same round trip as their decision (docs/design.md: at most one
Redis round trip per request), so both must name the same counter.
"""

from __future__ import annotations

import time


def usage_period(epoch_s: float) -> str:
    """The metering period ("YYYY-MM", UTC) an instant falls in."""
    return time.strftime("%Y-%m", time.gmtime(epoch_s))


def usage_key(prefix: str, tenant_id: str, period: str) -> str:
    """Redis key of a tenant's usage counter; the hash tag keeps a tenant's keys in one cluster slot."""
    return f"{prefix}:{{{tenant_id}}}:usage:{period}"
