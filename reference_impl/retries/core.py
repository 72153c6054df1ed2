"""Client retry decisions: pure code, integer microseconds, clock and randomness passed in (docs/design.md).

The SimPy scenarios (`scenarios/retries.py`) and the load harness retry with this same code.

Backoff policies (`POLICIES`), each a small frozen object answering

    next_delay_us(attempt, previous_us, rng) -> int | None     # None: give up

where `attempt` counts the attempts made so far (1 after the first failure), `previous_us` is the
wait before the attempt that just failed (0 before the first retry) and `rng` is anything with
`randint(a, b)` (inclusive both ends), such as a seeded `random.Random`. As in Marc Brooker's
simulator (AWS Architecture Blog, 2015), the exponential term is `v = min(cap, base * 2**attempt)`,
so the first retry waits up to 2 x base:

* `no_backoff`: retry at once (Brooker's "no backoff").
* `fixed`: wait `base` every time.
* `exponential`: wait v.
* `full_jitter`: U(0, v).
* `equal_jitter`: v/2 + U(0, v/2).
* `decorrelated_jitter`: min(cap, U(base, 3 * previous)), starting from previous = base.

Defaults are Brooker's: base 5 ms, cap 2000 ms. `max_attempts` (None: unlimited) bounds the
attempts, the first included; a policy returns None once that many have been made.

Beside them:

* `honour_retry_after`: a server's `Retry-After` raises the computed wait (never lowers it);
  `parse_retry_after` reads the header (delay-seconds or HTTP-date, RFC 9110 section 10.2.3).
* `RetryBudget`: a token bucket that successes refill (Finagle's RetryBudget, gRPC retry
  throttling): each success deposits `ratio_pct` percent of one retry, a floor of `min_per_s`
  retries per second refills with time, and a retry spends one whole token. When every call fails
  nothing is deposited, so retries fall to the floor instead of multiplying the load.
* A circuit breaker after pybreaker: one class per state (`Closed`, `Open`, `HalfOpen`), each
  deciding `allow`, `success` and `failure` from the clock passed in; `CircuitBreaker` holds the
  current state and tells listeners (`BreakerListener`) about outcomes and transitions. The same
  breaker guards the rate limiter's Redis calls in the service (reference_impl/ratelimit/breaker.py).
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

US_PER_MS = 1_000
US_PER_S = 1_000_000
DEFAULT_BASE_US = 5 * US_PER_MS
DEFAULT_CAP_US = 2_000 * US_PER_MS
_MAX_SHIFT = 62
"""Beyond 2**62 x base every exponential term is the cap; avoids building huge integers."""


class Rng(Protocol):
    """What a policy needs of a random source: `random.Random` provides it."""

    def randint(self, a: int, b: int) -> int: ...


# ---------------------------------------------------------------------------------------------
# Backoff policies


@dataclass(frozen=True, slots=True)
class Backoff:
    """The shared part of every policy: parameters, validation and the attempt limit."""

    base_us: int = DEFAULT_BASE_US
    cap_us: int = DEFAULT_CAP_US
    max_attempts: int | None = None

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.base_us < 1 or self.cap_us < self.base_us:
            raise ValueError(f"need 1 <= base_us <= cap_us, got base_us={self.base_us}, cap_us={self.cap_us}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")

    def next_delay_us(self, attempt: int, previous_us: int, rng: Rng) -> int | None:
        """The wait before attempt `attempt + 1`, or None when `max_attempts` have been made."""
        if attempt < 1:
            raise ValueError(f"attempt counts the attempts made so far and starts at 1, got {attempt}")
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        return self._delay(attempt, previous_us, rng)

    def exponential_us(self, attempt: int) -> int:
        """v = min(cap, base * 2**attempt)."""
        return self.cap_us if attempt >= _MAX_SHIFT else min(self.cap_us, self.base_us << attempt)

    def _delay(self, attempt: int, previous_us: int, rng: Rng) -> int:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class NoBackoff(Backoff):
    name: ClassVar[str] = "no_backoff"

    def _delay(self, attempt: int, previous_us: int, rng: Rng) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class FixedBackoff(Backoff):
    name: ClassVar[str] = "fixed"

    def _delay(self, attempt: int, previous_us: int, rng: Rng) -> int:
        return self.base_us


@dataclass(frozen=True, slots=True)
class ExponentialBackoff(Backoff):
    name: ClassVar[str] = "exponential"

    def _delay(self, attempt: int, previous_us: int, rng: Rng) -> int:
        return self.exponential_us(attempt)


@dataclass(frozen=True, slots=True)
class FullJitter(Backoff):
    name: ClassVar[str] = "full_jitter"

    def _delay(self, attempt: int, previous_us: int, rng: Rng) -> int:
        return rng.randint(0, self.exponential_us(attempt))


@dataclass(frozen=True, slots=True)
class EqualJitter(Backoff):
    name: ClassVar[str] = "equal_jitter"

    def _delay(self, attempt: int, previous_us: int, rng: Rng) -> int:
        v = self.exponential_us(attempt)
        half = v // 2
        return half + rng.randint(0, v - half)


@dataclass(frozen=True, slots=True)
class DecorrelatedJitter(Backoff):
    name: ClassVar[str] = "decorrelated_jitter"

    def _delay(self, attempt: int, previous_us: int, rng: Rng) -> int:
        previous = max(self.base_us, previous_us)
        return min(self.cap_us, rng.randint(self.base_us, 3 * previous))


POLICIES: dict[str, type[Backoff]] = {p.name: p for p in (
    NoBackoff, FixedBackoff, ExponentialBackoff, FullJitter, EqualJitter, DecorrelatedJitter)}
BROOKER_POLICIES = ("no_backoff", "exponential", "equal_jitter", "full_jitter", "decorrelated_jitter")
"""The five policies of Brooker's experiment."""


def make_policy(name: str, *, base_us: int = DEFAULT_BASE_US, cap_us: int = DEFAULT_CAP_US,
                max_attempts: int | None = None) -> Backoff:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown retry policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(base_us=base_us, cap_us=cap_us, max_attempts=max_attempts)


# ---------------------------------------------------------------------------------------------
# Retry-After


def parse_retry_after(value: str | None, now_us: int) -> int | None:
    """A `Retry-After` header as µs to wait from `now_us` (µs since the Unix epoch).

    delay-seconds or an HTTP-date (a date in the past means 0); None when absent or malformed,
    so a garbled header falls back to the policy's own wait.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text) * US_PER_S
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        return None
    return max(0, round(when.timestamp() * US_PER_S) - now_us)


def honour_retry_after(delay_us: int | None, retry_after_us: int | None, *,
                       max_wait_us: int | None = None) -> int | None:
    """The wait before the next attempt: at least what the server asked for.

    None (give up) stays None: a `Retry-After` does not buy attempts the policy has run out of.
    With `max_wait_us`, a wait longer than the caller can afford gives up instead.
    """
    if delay_us is None:
        return None
    wait = delay_us if retry_after_us is None else max(delay_us, retry_after_us)
    if max_wait_us is not None and wait > max_wait_us:
        return None
    return wait


# ---------------------------------------------------------------------------------------------
# Retry budget


RETRY_UNITS = 100 * US_PER_S
"""One retry in budget units: a success adds `ratio_pct` x US_PER_S units (ratio_pct percent of a
retry) and each µs adds `min_per_s` x 100 units (min_per_s retries per second), both exact."""


@dataclass(frozen=True, slots=True)
class BudgetState:
    units: int
    updated_us: int


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries may be at most `ratio_pct`% of successes, plus `min_per_s` per second, banking up to `burst`."""

    ratio_pct: int = 10
    min_per_s: int = 1
    burst: int = 10

    def __post_init__(self) -> None:
        if self.ratio_pct < 0 or self.min_per_s < 0 or self.burst < 1:
            raise ValueError(f"need ratio_pct >= 0, min_per_s >= 0 and burst >= 1, got {self.ratio_pct}, "
                             f"{self.min_per_s}, {self.burst}")

    @property
    def capacity(self) -> int:
        return self.burst * RETRY_UNITS

    def _refilled(self, state: BudgetState | None, now_us: int) -> BudgetState:
        """The state at `now_us`: full when new; time refills it (a clock stepping back adds nothing)."""
        if state is None:
            return BudgetState(self.capacity, now_us)
        if now_us <= state.updated_us:
            return state
        elapsed = min(now_us - state.updated_us, self.capacity)  # past the capacity it is full anyway
        return BudgetState(min(self.capacity, state.units + elapsed * self.min_per_s * 100), now_us)

    def on_success(self, state: BudgetState | None, now_us: int) -> BudgetState:
        s = self._refilled(state, now_us)
        return BudgetState(min(self.capacity, s.units + self.ratio_pct * US_PER_S), s.updated_us)

    def try_retry(self, state: BudgetState | None, now_us: int) -> tuple[bool, BudgetState]:
        """Spend one retry if the budget holds one; else refuse and leave it as it is."""
        s = self._refilled(state, now_us)
        if s.units < RETRY_UNITS:
            return False, s
        return True, BudgetState(s.units - RETRY_UNITS, s.updated_us)

    def available(self, state: BudgetState | None, now_us: int) -> int:
        """Whole retries the budget would allow now."""
        return self._refilled(state, now_us).units // RETRY_UNITS


# ---------------------------------------------------------------------------------------------
# Circuit breaker


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Open after `fail_max` consecutive failures; after `reset_timeout_us` let `half_open_trials` through."""

    fail_max: int = 5
    reset_timeout_us: int = 2 * US_PER_S
    half_open_trials: int = 1

    def __post_init__(self) -> None:
        if self.fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, got {self.fail_max}")
        if self.reset_timeout_us < 1:
            raise ValueError(f"reset_timeout_us must be >= 1, got {self.reset_timeout_us}")
        if self.half_open_trials < 1:
            raise ValueError(f"half_open_trials must be >= 1, got {self.half_open_trials}")


class BreakerState(Protocol):
    name: ClassVar[str]

    def allow(self, config: BreakerConfig, now_us: int) -> tuple[bool, BreakerState]: ...

    def success(self, config: BreakerConfig, now_us: int) -> BreakerState: ...

    def failure(self, config: BreakerConfig, now_us: int) -> BreakerState: ...

    def retry_after_us(self, config: BreakerConfig, now_us: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Closed:
    """Calls pass; `failures` counts consecutive failures."""

    failures: int = 0
    name: ClassVar[str] = "closed"

    def allow(self, config: BreakerConfig, now_us: int) -> tuple[bool, BreakerState]:
        return True, self

    def success(self, config: BreakerConfig, now_us: int) -> BreakerState:
        return Closed() if self.failures else self

    def failure(self, config: BreakerConfig, now_us: int) -> BreakerState:
        failures = self.failures + 1
        return Open(now_us) if failures >= config.fail_max else Closed(failures)

    def retry_after_us(self, config: BreakerConfig, now_us: int) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class Open:
    """Calls fail fast until `reset_timeout_us` after `since_us`; then the next call is a trial."""

    since_us: int
    name: ClassVar[str] = "open"

    def allow(self, config: BreakerConfig, now_us: int) -> tuple[bool, BreakerState]:
        if now_us - self.since_us >= config.reset_timeout_us:
            return True, HalfOpen(1, now_us)
        return False, self

    def success(self, config: BreakerConfig, now_us: int) -> BreakerState:
        # A late answer to a call sent before the breaker opened proves nothing about now, and
        # letting it (or a late failure) cut the window short or extend it would break the
        # one-trial-per-window promise.
        return self

    def failure(self, config: BreakerConfig, now_us: int) -> BreakerState:
        return self

    def retry_after_us(self, config: BreakerConfig, now_us: int) -> int:
        return max(0, self.since_us + config.reset_timeout_us - now_us)


@dataclass(frozen=True, slots=True)
class HalfOpen:
    """`trials` calls, the first sent at `since_us`, are testing the service; a success closes, a failure reopens
    (any outcome settles it: a reply or a timeout is news about the service now, whichever call carried it).

    A trial whose outcome never comes back (its caller was cancelled) would wedge the breaker here,
    so after another `reset_timeout_us` the trials count as lost and a new round begins.
    """

    trials: int
    since_us: int
    name: ClassVar[str] = "half_open"

    def allow(self, config: BreakerConfig, now_us: int) -> tuple[bool, BreakerState]:
        if self.trials < config.half_open_trials:
            return True, HalfOpen(self.trials + 1, self.since_us)
        if now_us - self.since_us >= config.reset_timeout_us:
            return True, HalfOpen(1, now_us)
        return False, self

    def success(self, config: BreakerConfig, now_us: int) -> BreakerState:
        return Closed()

    def failure(self, config: BreakerConfig, now_us: int) -> BreakerState:
        return Open(now_us)

    def retry_after_us(self, config: BreakerConfig, now_us: int) -> int:
        if self.trials < config.half_open_trials:
            return 0
        return max(0, self.since_us + config.reset_timeout_us - now_us)


class BreakerListener:
    """Hooks, as in pybreaker: subclass and override what you need (metrics, logs)."""

    def state_change(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState, now_us: int) -> None:
        """The breaker moved from `old` to `new` (another state class) at `now_us`."""

    def success(self, breaker: CircuitBreaker, now_us: int) -> None:
        """A call succeeded (reported in any state)."""

    def failure(self, breaker: CircuitBreaker, now_us: int) -> None:
        """A call failed (reported in any state)."""


class CircuitBreaker:
    """One caller's breaker (a client's, or a service worker's in front of Redis): the current state, moved by
    the state classes, with listener hooks.

    Methods never await, so under asyncio each runs whole and concurrent requests are interleavings of
    whole calls. Not thread-safe: keep one breaker per event loop.
    """

    def __init__(self, config: BreakerConfig | None = None, *, state: BreakerState | None = None,
                 listeners: Iterable[BreakerListener] = ()) -> None:
        self.config = config or BreakerConfig()
        self.state: BreakerState = state or Closed()
        self.listeners = list(listeners)

    def add_listener(self, listener: BreakerListener) -> None:
        self.listeners.append(listener)

    def allow(self, now_us: int) -> bool:
        """May this caller make its call now? When not, it fails fast."""
        allowed, new = self.state.allow(self.config, now_us)
        self._move(new, now_us)
        return allowed

    def record_success(self, now_us: int) -> None:
        for listener in self.listeners:
            listener.success(self, now_us)
        self._move(self.state.success(self.config, now_us), now_us)

    def record_failure(self, now_us: int) -> None:
        for listener in self.listeners:
            listener.failure(self, now_us)
        self._move(self.state.failure(self.config, now_us), now_us)

    def retry_after_us(self, now_us: int) -> int:
        """Until the breaker may let a caller through again (0 if it would now): a fail-fast answer's
        `Retry-After`."""
        return self.state.retry_after_us(self.config, now_us)

    def _move(self, new: BreakerState, now_us: int) -> None:
        old, self.state = self.state, new
        if type(old) is not type(new):
            for listener in self.listeners:
                listener.state_change(self, old, new, now_us)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.config}, state={self.state})"
