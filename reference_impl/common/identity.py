"""Who a request belongs to: the tenant, and the rules that keep its identity in the API key alone.

Pure code, shared by the auth middleware, the problem handlers and every pattern that acts per
tenant; it sits in `common` so that none of them depends on another pattern for it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SMUGGLED_TENANT_FIELDS = frozenset({"tenant_id", "tenant"})


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    plan: str
    limits: dict[str, Any] | None


def same_secret(a: str, b: str) -> bool:
    """Compare two secrets in constant time, so the comparison leaks nothing about where they differ."""
    return hmac.compare_digest(a.encode(), b.encode())


def reject_smuggled_tenant(*sources: Mapping[str, Any] | Iterable[str] | None) -> str | None:
    """The first field naming a tenant in a body or query string, or None.

    The tenant comes from the API key alone; a request that tries to name one is refused (422)
    rather than silently ignored, so a client bug surfaces instead of reading the wrong tenant.
    """
    for src in sources:
        if not src:
            continue
        for name in src:
            if str(name).lower() in SMUGGLED_TENANT_FIELDS:
                return str(name)
    return None
