"""Which `Policy` a tenant gets: its `limits` override when set (docs/contract.md), else its plan's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reference_impl.ratelimit.core import US_PER_S, Policy

PLAN_POLICIES: Mapping[str, Policy] = {
    "free": Policy(60, 60 * US_PER_S),
    "pro": Policy(600, 60 * US_PER_S),
    "enterprise": Policy(6000, 60 * US_PER_S),
}
DEFAULT_PLAN = "free"
"""An unknown plan (a row written by hand, an older schema) gets the strictest policy."""


def policy_for(plan: str, limits: Mapping[str, Any] | None) -> Policy:
    """The override `{requests, window_s}` wins over the plan's default."""
    if limits is not None:
        return Policy.from_limits(int(limits["requests"]), float(limits["window_s"]))
    return PLAN_POLICIES.get(plan, PLAN_POLICIES[DEFAULT_PLAN])
