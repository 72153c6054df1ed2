"""The rate limiter's circuit breaker in front of Redis, and what the limiter does when Redis is unavailable.

The breaker is the lab's one circuit breaker, `reference_impl.retries.core.CircuitBreaker` (pure, the
clock passed in, after pybreaker); this module says how the limiter uses it. Before each Redis call
the middleware asks `allow(now_us)`; afterwards it reports the outcome with `record_success(now_us)`
or `record_failure(now_us)` (a timeout, a refused connection). When the breaker says no, or the
call fails, the limiter applies its `FailurePolicy` at once.

* `Closed`: every call goes to Redis; `fail_max` consecutive failures open the breaker.
* `Open`: no call goes to Redis for `reset_timeout_us`, so an unreachable Redis costs no timeout.
* `HalfOpen`: exactly one call, the probe (`half_open_trials=1`), goes to Redis; every other caller
  is refused until it reports. Success closes the breaker; failure opens it for another whole window.

So once open, a dead Redis costs at most one timeout per `reset_timeout_us` (the calls already in
flight when it died still time out: the breaker cannot recall them).

Two edge cases decided deliberately (in the state classes):

* Outcomes reported while open are ignored: they belong to calls made before it opened, and
  letting them cut the window short or extend it would break the one-probe-per-window promise.
  While half-open any outcome settles the probe: a reply (or a timeout) is news about Redis now,
  whichever call carried it.
* A probe whose outcome never arrives (its request was cancelled) would wedge the breaker half-open,
  so after a whole window it counts as lost and the next caller becomes the probe.

One breaker per service worker (per event loop).
"""

from __future__ import annotations

from enum import StrEnum

from reference_impl.retries.core import (
    BreakerConfig,
    BreakerListener,
    BreakerState,
    CircuitBreaker,
)

__all__ = ["UNAVAILABLE_STATUS", "BreakerConfig", "BreakerListener", "BreakerState", "CircuitBreaker",
           "FailurePolicy", "redis_breaker"]

UNAVAILABLE_STATUS = 503
"""What a fail-closed limiter answers when it cannot decide: the service, not the client, is at fault."""


class FailurePolicy(StrEnum):
    """What the limiter does when Redis is unavailable (the call failed or the breaker refused it)."""

    OPEN = "open"
    """Admit the request: availability over strictness (a tenant may briefly exceed its quota)."""
    CLOSED = "closed"
    """Refuse with `UNAVAILABLE_STATUS`: strictness over availability."""

    @property
    def admits(self) -> bool:
        return self is FailurePolicy.OPEN


def redis_breaker(*, fail_max: int = 5, reset_timeout_us: int = 1_000_000) -> CircuitBreaker:
    """The limiter's breaker: opens after `fail_max` consecutive failures, one probe per `reset_timeout_us`."""
    return CircuitBreaker(BreakerConfig(fail_max=fail_max, reset_timeout_us=reset_timeout_us, half_open_trials=1))
