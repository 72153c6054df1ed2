"""A circuit breaker for the rate limiter's Redis calls: pure, the clock passed in (after pybreaker).

Before each Redis call the middleware asks `allow(now_us)`; afterwards it reports the outcome with
`record_success(now_us)` or `record_failure(now_us)` (a timeout, a refused connection). When the
breaker says no, or the call fails, the limiter applies its `FailurePolicy` at once.

* `Closed`: every call goes to Redis; `fail_max` consecutive failures open the breaker.
* `Open`: no call goes to Redis for `reset_timeout_us`, so an unreachable Redis costs no timeout.
* `HalfOpen`: exactly one call, the probe, goes to Redis; every other caller is refused until it
  reports. Success closes the breaker; failure opens it for another whole window.

So once open, a dead Redis costs at most one timeout per `reset_timeout_us` (the calls already in
flight when it died still time out: the breaker cannot recall them).

Two edge cases decided deliberately:

* Outcomes reported while open are ignored: they belong to calls made before it opened, and
  letting them cut the window short or extend it would break the one-probe-per-window promise.
  While half-open any outcome settles the probe: a reply (or a timeout) is news about Redis now,
  whichever call carried it.
* A probe whose outcome never arrives (its request was cancelled) would wedge the breaker half-open,
  so after a whole window it counts as lost and the next caller becomes the probe.

Methods never await, so under asyncio each runs whole and concurrent requests are interleavings of
whole calls. Not thread-safe: keep one breaker per event loop (per service worker).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from enum import StrEnum
from typing import ClassVar

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


class BreakerListener:
    """Hooks, as in pybreaker: subclass and override what you need (metrics, logs)."""

    def state_change(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState, now_us: int) -> None:
        """The breaker moved from `old` to `new` at `now_us`."""

    def success(self, breaker: CircuitBreaker, now_us: int) -> None:
        """A Redis call succeeded (reported in any state)."""

    def failure(self, breaker: CircuitBreaker, now_us: int) -> None:
        """A Redis call failed (reported in any state)."""


class BreakerState(ABC):
    """One state of the breaker; `since_us` is when the breaker entered it."""

    name: ClassVar[str]

    def __init__(self, breaker: CircuitBreaker, since_us: int) -> None:
        self.breaker = breaker
        self.since_us = since_us

    @abstractmethod
    def allow(self, now_us: int) -> bool: ...

    @abstractmethod
    def on_success(self, now_us: int) -> None: ...

    @abstractmethod
    def on_failure(self, now_us: int) -> None: ...

    @abstractmethod
    def retry_after_us(self, now_us: int) -> int:
        """How long until a caller may be let through to Redis (0: now)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(since_us={self.since_us})"


class Closed(BreakerState):
    name = "closed"

    def __init__(self, breaker: CircuitBreaker, since_us: int) -> None:
        super().__init__(breaker, since_us)
        self.failures = 0
        """Consecutive failures so far."""

    def allow(self, now_us: int) -> bool:
        return True

    def on_success(self, now_us: int) -> None:
        self.failures = 0

    def on_failure(self, now_us: int) -> None:
        self.failures += 1
        if self.failures >= self.breaker.fail_max:
            self.breaker._enter(Open, now_us)

    def retry_after_us(self, now_us: int) -> int:
        return 0


class Open(BreakerState):
    name = "open"

    def allow(self, now_us: int) -> bool:
        if now_us - self.since_us < self.breaker.reset_timeout_us:
            return False
        # The window is over: this caller becomes the half-open probe.
        return self.breaker._enter(HalfOpen, now_us).allow(now_us)

    def on_success(self, now_us: int) -> None:
        pass

    def on_failure(self, now_us: int) -> None:
        pass

    def retry_after_us(self, now_us: int) -> int:
        return max(0, self.since_us + self.breaker.reset_timeout_us - now_us)


class HalfOpen(BreakerState):
    name = "half_open"

    def __init__(self, breaker: CircuitBreaker, since_us: int) -> None:
        super().__init__(breaker, since_us)
        self.probe_us: int | None = None
        """When the probe was let through; None until a caller takes it."""

    def allow(self, now_us: int) -> bool:
        if self.probe_us is not None and now_us - self.probe_us < self.breaker.reset_timeout_us:
            return False
        self.probe_us = now_us
        return True

    def on_success(self, now_us: int) -> None:
        self.breaker._enter(Closed, now_us)

    def on_failure(self, now_us: int) -> None:
        self.breaker._enter(Open, now_us)

    def retry_after_us(self, now_us: int) -> int:
        if self.probe_us is None:
            return 0
        return max(0, self.probe_us + self.breaker.reset_timeout_us - now_us)


class CircuitBreaker:
    """Closed → (`fail_max` consecutive failures) → Open → (`reset_timeout_us`) → HalfOpen → one probe."""

    def __init__(self, *, fail_max: int = 5, reset_timeout_us: int = 1_000_000, now_us: int = 0,
                 listeners: Iterable[BreakerListener] = ()) -> None:
        if fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, got {fail_max}")
        if reset_timeout_us < 1:
            raise ValueError(f"reset_timeout_us must be >= 1, got {reset_timeout_us}")
        self.fail_max = fail_max
        self.reset_timeout_us = reset_timeout_us
        self.listeners = list(listeners)
        self.state: BreakerState = Closed(self, now_us)

    def add_listener(self, listener: BreakerListener) -> None:
        self.listeners.append(listener)

    def allow(self, now_us: int) -> bool:
        """May this caller try Redis now? Open and half-open callers that may not are refused at once."""
        return self.state.allow(now_us)

    def record_success(self, now_us: int) -> None:
        for listener in self.listeners:
            listener.success(self, now_us)
        self.state.on_success(now_us)

    def record_failure(self, now_us: int) -> None:
        for listener in self.listeners:
            listener.failure(self, now_us)
        self.state.on_failure(now_us)

    def retry_after_us(self, now_us: int) -> int:
        """Until the breaker may let a caller through again: a fail-closed 503's `Retry-After`."""
        return self.state.retry_after_us(now_us)

    def _enter(self, state: type[BreakerState], now_us: int) -> BreakerState:
        old, self.state = self.state, state(self, now_us)
        for listener in self.listeners:
            listener.state_change(self, old, self.state, now_us)
        return self.state

    def __repr__(self) -> str:
        return f"CircuitBreaker(fail_max={self.fail_max}, reset_timeout_us={self.reset_timeout_us}, state={self.state!r})"
