"""ratelimit: five limiting algorithms, the concurrency limiter and the priority load shedder."""

from typing import Literal

from pydantic import BaseModel, Field

from saaslab.patterns.base import Axis, Design, Pattern

ALGORITHM = Axis("ratelimit", (
    Design("fixed_window", "a counter per aligned window"),
    Design("sliding_log", "a timestamp per admitted request"),
    Design("sliding_counter", "two windows' counters, weighted"),
    Design("token_bucket", "tokens refilled continuously"),
    Design("gcra", "the generic cell rate algorithm: one theoretical arrival time"),
    Design("naive", "fixed_window read and written in two round trips", unsafe=True),
), default="token_bucket", extra_choices=("off",))


class RateLimitSettings(BaseModel):
    """docs/contract.md "Rate limiting"."""

    ratelimit: ALGORITHM.literal = ALGORITHM.default
    # `shadow` decides and reports (headers, metrics) but never refuses.
    ratelimit_mode: Literal["enforce", "shadow"] = "enforce"
    # When Redis cannot decide: `open` admits, `closed` answers 503.
    ratelimit_failure: Literal["open", "closed"] = "open"
    ratelimit_timeout_ms: int = Field(default=50, ge=1)
    # The limiter's circuit breaker: consecutive failures that open it, and how long it stays open.
    ratelimit_breaker_fail_max: int = Field(default=5, ge=1)
    ratelimit_breaker_reset_s: float = Field(default=1.0, gt=0)


PATTERN = Pattern(
    slug="ratelimit",
    title="Tenant rate limiting",
    question=("Which limiting algorithm keeps a tenant within its quota most accurately, at what memory cost, "
              "and which ones stay correct under concurrency and clock skew?"),
    axes=(ALGORITHM,),
    core="reference_impl.ratelimit.core",
    invariants="reference_impl.ratelimit.invariants",
    service="reference_impl.ratelimit.wiring",
    simulation="scenarios.ratelimit",
    live="saaslab.live.ratelimit",
    loadtest="loadtests/ratelimit.py",
    report="saaslab.reports.ratelimit",
    notebook="notebooks/ratelimit.ipynb",
    bench="bench.ratelimit",
    settings=RateLimitSettings,
)
