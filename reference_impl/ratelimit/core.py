"""The rate-limiting decision cores: pure code, integer microseconds, the clock passed in (docs/design.md).

A `Policy` says "at most `requests` per `window_us`" (docs/contract.md's `limits`). Each algorithm maps
it to its own parameters and decides one request with

    decide(state, now_us, policy, cost=1) -> Decision(allowed, state, remaining, reset_us, retry_after_us)

`state` is None for a tenant never seen (or whose Redis key expired) and otherwise a small frozen
dataclass holding exactly what the algorithm's Lua script keeps in Redis, so the SimPy model, the
parity test and the service all run the same decision. `reset_us` (until the limiter has fully
recovered) and `retry_after_us` (until this request would pass, were nothing else to arrive; 0
when allowed) are durations from `now_us`.

Algorithms (`ALGORITHMS`):

* `fixed_window`: a counter per epoch-aligned window. Cheap, but a client can spend one window's
  quota just before a boundary and the next one just after it: up to 2x `requests` in one span.
* `sliding_log`: one timestamp per admitted request; exact, and memory grows with `requests`.
* `sliding_counter`: Cloudflare's estimate: the previous window's count weighted by the part of
  it still inside the sliding window, plus the current count, compared in integers scaled by
  `window_us` (no floats).
* `token_bucket`: capacity `requests`, refilled at `requests` per `window_us`. The level is kept
  in token-microseconds (one token = `window_us` units, refill = `requests` units per µs), so
  the refill is exact with no rounding drift.
* `gcra`: the generic cell rate algorithm: emission interval T = window_us // requests and a
  burst tolerance letting `requests` pass at once; the state is one timestamp.
* `naive`: the fixed-window decision, but its store reads the count and writes it back in two
  round trips. It is the deliberately unsafe design: concurrent requests read the same count.

Clocks that step back (app servers disagreeing, NTP slews) never move a state backwards: each
algorithm keeps the newest time it has seen and treats an older `now_us` conservatively.

All intermediates stay below 2**53, because the Lua twins compute in doubles: `Policy` rejects
requests * window_us above `MAX_REQUESTS_X_WINDOW`.

Beside them, after Stripe's limiters: `acquire`/`release` (at most N requests in flight per
tenant, with leases that expire so a crashed worker's slot comes back; `concurrency.lua` is the
twin of `acquire`) and `LoadShedder` (critical traffic may use all capacity; the `default` and
`sheddable` route classes are shed first as utilisation grows). `state_bytes` estimates a limiter
key's memory in Redis, for the simulation.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

US_PER_S = 1_000_000
MAX_REQUESTS_X_WINDOW = 2**50
"""Bound on requests * window_us: keeps every intermediate (at most 3x it) exact in a double."""

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Policy:
    """At most `requests` requests per `window_us` microseconds."""

    requests: int
    window_us: int

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if self.window_us < self.requests:
            raise ValueError(f"window_us must be >= requests (1 µs per request at least), got "
                             f"{self.window_us} for {self.requests} requests")
        if self.requests * self.window_us > MAX_REQUESTS_X_WINDOW:
            raise ValueError(f"requests * window_us must be <= 2**50 for exact arithmetic in Redis Lua, "
                             f"got {self.requests} * {self.window_us}")

    @classmethod
    def from_limits(cls, requests: int, window_s: float) -> Policy:
        """From docs/contract.md's `limits: {requests, window_s}`."""
        return cls(requests, round(window_s * US_PER_S))

    @property
    def window_s(self) -> float:
        return self.window_us / US_PER_S

    def check_cost(self, cost: int) -> None:
        if not 1 <= cost <= self.requests:
            raise ValueError(f"cost must be between 1 and requests ({self.requests}), got {cost}")


@dataclass(frozen=True, slots=True)
class Decision(Generic[S]):
    allowed: bool
    state: S
    remaining: int
    reset_us: int
    retry_after_us: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# Fixed window (and the naive design's decision)


@dataclass(frozen=True, slots=True)
class FixedWindowState:
    """Redis STRING: the two fields packed as little-endian int64s (`redis_store.PACKED_STATES`)."""

    window_start_us: int
    count: int


def fixed_window(state: FixedWindowState | None, now_us: int, policy: Policy, cost: int = 1
                 ) -> Decision[FixedWindowState]:
    policy.check_cost(cost)
    w, r = policy.window_us, policy.requests
    start = now_us - now_us % w
    count = 0
    if state is not None and state.window_start_us >= start:
        # Same window, or the clock stepped back into an older one: keep counting the newest.
        start, count = state.window_start_us, state.count
    allowed = count + cost <= r
    if allowed:
        count += cost
    reset = start + w - now_us
    return Decision(allowed, FixedWindowState(start, count), r - count, reset, 0 if allowed else reset)


# ---------------------------------------------------------------------------------------------
# Sliding window log


@dataclass(frozen=True, slots=True)
class SlidingLogState:
    """Redis LIST of admitted request times, oldest first (one entry per unit of cost)."""

    entries: tuple[int, ...]


def sliding_log(state: SlidingLogState | None, now_us: int, policy: Policy, cost: int = 1
                ) -> Decision[SlidingLogState | None]:
    """Admit if fewer than `requests` entries lie in (t - window, t]; t = max(now, newest entry)."""
    policy.check_cost(cost)
    w, r = policy.window_us, policy.requests
    entries = state.entries if state is not None else ()
    t = max(now_us, entries[-1]) if entries else now_us
    entries = entries[bisect.bisect_right(entries, t - w):]
    allowed = len(entries) + cost <= r
    if allowed:
        entries = entries + (t,) * cost
    retry = 0
    if not allowed:
        # The oldest entries must age out until `cost` more fit; the last of them sets the wait.
        retry = entries[len(entries) + cost - r - 1] + w - now_us
    reset = entries[-1] + w - now_us if entries else 0
    return Decision(allowed, SlidingLogState(entries) if entries else None, r - len(entries), reset, retry)


# ---------------------------------------------------------------------------------------------
# Sliding window counter


@dataclass(frozen=True, slots=True)
class SlidingCounterState:
    """Redis STRING: the three fields packed as little-endian int64s (`redis_store.PACKED_STATES`)."""

    window_start_us: int
    current: int
    previous: int


def sliding_counter(state: SlidingCounterState | None, now_us: int, policy: Policy, cost: int = 1
                    ) -> Decision[SlidingCounterState]:
    """Admit if previous * (window - elapsed) / window + current + cost <= requests, times window."""
    policy.check_cost(cost)
    w, r = policy.window_us, policy.requests
    start = now_us - now_us % w
    current = previous = 0
    if state is not None:
        if start > state.window_start_us:
            # Rolled over: the old current becomes previous only if it is the window just before.
            previous = state.current if start - state.window_start_us == w else 0
        else:
            start, current, previous = state.window_start_us, state.current, state.previous
    elapsed = max(0, now_us - start)
    used = previous * (w - elapsed) + current * w
    allowed = used + cost * w <= r * w
    if allowed:
        current += cost
        used += cost * w
    retry = 0
    if not allowed:
        retry = _sliding_counter_wait(start, current, previous, now_us, policy, cost)
    if current:
        reset = start + 2 * w - now_us
    elif previous:
        reset = start + w - now_us
    else:
        reset = 0
    remaining = max(0, (r * w - used) // w)
    return Decision(allowed, SlidingCounterState(start, current, previous), remaining, reset, retry)


def _sliding_counter_wait(start: int, current: int, previous: int, now_us: int, policy: Policy,
                          cost: int) -> int:
    """Exact µs until a refused request would pass, given no other traffic."""
    w, r = policy.window_us, policy.requests
    slack = r - current - cost
    if slack >= 0 and previous > 0:
        # Still in this window, once previous * (w - e) <= slack * w.
        elapsed_needed = w - slack * w // previous
        if elapsed_needed < w:
            return start + elapsed_needed - now_us
    # Next window: previous becomes `current`, current restarts at 0.
    elapsed_needed = 0 if current == 0 else max(0, w - (r - cost) * w // current)
    return start + w + elapsed_needed - now_us


# ---------------------------------------------------------------------------------------------
# Token bucket


@dataclass(frozen=True, slots=True)
class TokenBucketState:
    """Redis STRING: the two fields packed as little-endian int64s (`redis_store.PACKED_STATES`).

    `level` is in token-µs (one token = window_us units); `updated_us` is the time of that level.
    """

    level: int
    updated_us: int


def token_bucket(state: TokenBucketState | None, now_us: int, policy: Policy, cost: int = 1
                 ) -> Decision[TokenBucketState]:
    policy.check_cost(cost)
    w, r = policy.window_us, policy.requests
    capacity = r * w
    if state is None:
        level, updated = capacity, now_us
    else:
        # min(): after a policy change the old level is clamped to the new capacity.
        level, updated = min(state.level, capacity), state.updated_us
    if now_us > updated:
        # A full window refills the whole bucket, so longer idle gaps need not be multiplied.
        level = min(capacity, level + min(now_us - updated, w) * r)
        updated = now_us
    need = cost * w
    allowed = level >= need
    if allowed:
        level -= need
    ahead = updated - now_us  # > 0 only when the clock stepped back
    retry = 0 if allowed else ahead + _ceil_div(need - level, r)
    reset = ahead + _ceil_div(capacity - level, r)
    return Decision(allowed, TokenBucketState(level, updated), level // w, reset, retry)


# ---------------------------------------------------------------------------------------------
# GCRA


@dataclass(frozen=True, slots=True)
class GcraState:
    """Redis STRING: the theoretical arrival time in µs."""

    tat_us: int


def gcra_interval(policy: Policy) -> int:
    """The emission interval T: one request per T µs in the long run."""
    return policy.window_us // policy.requests


def gcra(state: GcraState | None, now_us: int, policy: Policy, cost: int = 1) -> Decision[GcraState | None]:
    """Admit if the new TAT is at most `requests` intervals ahead of now (burst of `requests`)."""
    policy.check_cost(cost)
    interval = gcra_interval(policy)
    burst = policy.requests * interval
    tat = max(state.tat_us, now_us) if state is not None else now_us
    new_tat = tat + cost * interval
    allowed = new_tat - now_us <= burst
    if allowed:
        tat = new_tat
        state = GcraState(tat)
    retry = 0 if allowed else new_tat - burst - now_us
    remaining = max(0, (burst - (tat - now_us)) // interval)
    return Decision(allowed, state, remaining, tat - now_us, retry)


# ---------------------------------------------------------------------------------------------
# Registry

Decide = Callable[[Any, int, Policy, int], Decision[Any]]

ALGORITHMS: dict[str, Decide] = {
    "fixed_window": fixed_window,
    "sliding_log": sliding_log,
    "sliding_counter": sliding_counter,
    "token_bucket": token_bucket,
    "gcra": gcra,
    "naive": fixed_window,
}
STRICT_ALGORITHMS = ("fixed_window", "sliding_log", "sliding_counter", "token_bucket", "gcra")
"""Decided atomically in Redis; `naive` is the same decision as fixed_window without atomicity."""


def decide(algorithm: str, state: Any, now_us: int, policy: Policy, cost: int = 1) -> Decision[Any]:
    try:
        core = ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"unknown rate-limit algorithm {algorithm!r}; choose one of "
                         f"{', '.join(ALGORITHMS)}") from None
    return core(state, now_us, policy, cost)


# ---------------------------------------------------------------------------------------------
# HTTP headers (docs/contract.md, "Rate limiting")


def remaining_header(remaining: int) -> str:
    """`RateLimit-Remaining`: never negative."""
    return str(max(0, remaining))


def reset_header(reset_us: int) -> str:
    """`RateLimit-Reset`: whole seconds, rounded up."""
    return str(_ceil_div(max(0, reset_us), US_PER_S))


def ratelimit_headers(policy: Policy, *, allowed: bool, remaining: int, reset_us: int,
                      retry_after_us: int) -> dict[str, str]:
    """`RateLimit-*` headers, plus `Retry-After` (whole seconds, at least 1) when refused."""
    window = policy.window_s
    headers = {
        "RateLimit-Limit": str(policy.requests),
        "RateLimit-Remaining": remaining_header(remaining),
        "RateLimit-Reset": reset_header(reset_us),
        "RateLimit-Policy": f"{policy.requests};w={int(window) if window == int(window) else window}",
    }
    if not allowed:
        headers["Retry-After"] = str(max(1, _ceil_div(retry_after_us, US_PER_S)))
    return headers


# ---------------------------------------------------------------------------------------------
# Concurrent requests limiter


@dataclass(frozen=True, slots=True)
class Leases:
    """Redis ZSET {lease_id: expiry µs}, kept here sorted by (expiry, lease_id)."""

    entries: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ConcurrencyDecision:
    allowed: bool
    state: Leases
    in_flight: int
    retry_after_us: int
    """When refused: until the oldest lease expires (an upper bound: a release may come sooner)."""


def acquire(state: Leases | None, now_us: int, lease_id: str, limit: int, lease_us: int) -> ConcurrencyDecision:
    """Take one of `limit` slots for `lease_us`; leases past their expiry no longer count."""
    if limit < 1 or lease_us < 1:
        raise ValueError("limit and lease_us must be >= 1")
    live = tuple(e for e in (state.entries if state else ()) if e[0] > now_us)
    # Acquiring a lease already held renews it rather than taking a second slot.
    others = tuple(e for e in live if e[1] != lease_id)
    allowed = len(others) < limit
    if allowed:
        live = tuple(sorted((*others, (now_us + lease_us, lease_id))))
    retry = 0 if allowed else live[0][0] - now_us
    return ConcurrencyDecision(allowed, Leases(live), len(live), retry)


def release(state: Leases | None, lease_id: str) -> Leases:
    return Leases(tuple(e for e in (state.entries if state else ()) if e[1] != lease_id))


# ---------------------------------------------------------------------------------------------
# Priority load shedder


ROUTE_CLASSES = ("critical", "default", "sheddable")
"""Route classes, most important first (docs/contract.md): payments and saga commands, other writes, reads and lists."""
DEFAULT_SHARES_PCT: Mapping[str, int] = {"critical": 100, "default": 80, "sheddable": 50}
"""Share of capacity (percent) up to which each class is admitted; critical may use all of it."""


@dataclass(frozen=True)
class LoadShedder:
    """Stripe's fleet usage load shedder: admit a request only while the work in flight stays within
    its class's share of capacity.

    `in_flight` counts what is being served now. Lower classes reach their share first, so as the
    service fills they are shed while critical traffic keeps the rest; critical is shed only when
    the whole capacity is in use.
    """

    capacity: int
    shares_pct: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SHARES_PCT))

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")
        if set(self.shares_pct) != set(ROUTE_CLASSES):
            raise ValueError(f"shares must name exactly the route classes {', '.join(ROUTE_CLASSES)}, "
                             f"got {', '.join(self.shares_pct) or 'none'}")
        shares = [self.shares_pct[c] for c in ROUTE_CLASSES]
        if shares[0] != 100:
            raise ValueError("critical traffic must be allowed all of the capacity (share 100)")
        if not all(0 < b <= a for a, b in itertools.pairwise(shares)):
            raise ValueError("shares must be above 0 and must not grow from critical to default to sheddable "
                             f"(critical is shed last), got {dict(self.shares_pct)}")

    def limit(self, route_class: str) -> int:
        """Requests in flight up to which `route_class` is admitted (at least 1)."""
        try:
            pct = self.shares_pct[route_class]
        except KeyError:
            raise ValueError(f"unknown route class {route_class!r}; choose one of {', '.join(ROUTE_CLASSES)}") from None
        return max(1, self.capacity * pct // 100)

    def admit(self, in_flight: int, route_class: str) -> bool:
        """Whether one more request of `route_class` may start while `in_flight` are being served."""
        return in_flight < self.limit(route_class)


# ---------------------------------------------------------------------------------------------
# Memory per tenant


# Measured with MEMORY USAGE on Redis 7.0 (a quicklist for the log), less the key name; the packed
# STRING states (16 or 24 bytes, with a TTL) measure 76 to 88 bytes, by the key name's length.
_BASE_BYTES = {"fixed_window": 80, "naive": 80, "sliding_counter": 80, "token_bucket": 80, "gcra": 48,
               "sliding_log": 150}
_LOG_ENTRY_BYTES_X4 = 41  # 10.25 bytes per list entry


def state_bytes(algorithm: str, state: Any, key_len: int = 40) -> int:
    """Estimated Redis memory of one limiter key holding `state` (0 when the key is absent)."""
    if state is None:
        return 0
    if algorithm == "sliding_log":
        return _BASE_BYTES[algorithm] + key_len + _LOG_ENTRY_BYTES_X4 * len(state.entries) // 4
    return _BASE_BYTES[algorithm] + key_len
