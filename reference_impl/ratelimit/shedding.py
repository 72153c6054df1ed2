"""The priority load shedder in the service (Stripe's fleet usage load shedder; docs/contract.md, "Rate limiting").

Every /v1 route has a class, declared here on the server (`ROUTE_CLASSES_DECLARED`; a route not named
is `sheddable` when it only reads, `default` when it writes). `LoadSheddingMiddleware` counts the /v1
requests this worker has in flight and asks `core.LoadShedder` whether one more of the request's class
may start: as in-flight work rises past a class's share of `shed_capacity`, that class is answered 503
problem+json, type `/load-shed`, with `Retry-After: 1`; `sheddable` first, `critical` only at full
capacity.

It runs outside the tenant auth middleware, so a shed request costs neither an API-key lookup nor a
Redis call; routes outside /v1 (health, readiness, metrics, admin) are never shed. Capacity is per
worker process: each worker sheds on its own load, which needs no coordination.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from reference_impl.common.problem import Problem
from reference_impl.ratelimit.core import ROUTE_CLASSES, LoadShedder
from saaslab.settings import Settings

ROUTE_CLASSES_DECLARED: dict[tuple[str, str], str] = {
    ("POST", "/v1/payments"): "critical",
    ("POST", "/v1/orders"): "critical",  # the saga's checkout command
}
"""Routes whose class is not the one their method implies."""
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RETRY_AFTER_S = 1


def route_class(method: str, path: str) -> str:
    """The class of a /v1 request: declared, else `sheddable` for reads and `default` for writes."""
    declared = ROUTE_CLASSES_DECLARED.get((method, path.rstrip("/") or "/"))
    if declared is not None:
        return declared
    return "sheddable" if method in READ_METHODS else "default"


class Shedding:
    """One worker's shedder: the core's decision and the counts /metrics reads."""

    def __init__(self, capacity: int, shares_pct: dict[str, int]) -> None:
        self.core = LoadShedder(capacity, dict(shares_pct))
        self.in_flight = 0
        """/v1 requests this worker is serving now (admitted, response not yet finished)."""
        self.admitted = dict.fromkeys(ROUTE_CLASSES, 0)
        self.shed = dict.fromkeys(ROUTE_CLASSES, 0)

    @classmethod
    def from_settings(cls, settings: Settings) -> Shedding | None:
        """None when shedding is off (`shed_capacity` 0)."""
        if settings.shed_capacity == 0:
            return None
        return cls(settings.shed_capacity, {"critical": 100, "default": settings.shed_default_pct,
                                            "sheddable": settings.shed_sheddable_pct})


class LoadSheddingMiddleware:
    """Sheds /v1 requests by class as this worker's in-flight work rises (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, shedding: Shedding, prefix: str = "/v1") -> None:
        self.app = app
        self.shedding = shedding
        self.prefix = prefix
        self.prefix_slash = prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith(self.prefix_slash) or path == self.prefix):
            await self.app(scope, receive, send)
            return
        shedding = self.shedding
        priority = route_class(scope["method"], path)
        if not shedding.core.admit(shedding.in_flight, priority):
            shedding.shed[priority] += 1
            await Problem(503, "load-shed", f"The service is shedding {priority} requests under load; retry later.",
                          headers={"Retry-After": str(RETRY_AFTER_S)}).send(send)
            return
        shedding.admitted[priority] += 1
        shedding.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            shedding.in_flight -= 1
