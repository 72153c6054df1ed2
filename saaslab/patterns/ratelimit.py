"""ratelimit: five limiting algorithms, the concurrency limiter and the priority load shedder (docs/contract.md)."""

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from saaslab.patterns.base import Axis, Design, Pattern

ALGORITHM = Axis("ratelimit", (
    Design("fixed_window", "a counter per aligned window"),
    Design("sliding_log", "a timestamp per admitted request"),
    Design("sliding_counter", "two windows' counters, weighted"),
    Design("token_bucket", "tokens refilled continuously"),
    Design("gcra", "the generic cell rate algorithm: one theoretical arrival time"),
    Design("naive", "fixed_window read and written in two round trips", unsafe=True),
), default="token_bucket", extra_choices=("off",))
SHEDDING = Axis(None, (  # compared in simulation; the service's shedder is Stripe's, sized by `shed_*` below
    Design("shed_priority", "Stripe's shedder: each route class admitted up to its share of capacity"),
    Design("shed_uniform", "one in-flight cap for every class"),
    Design("shed_none", "no shedding: every request queues"),
), default="shed_priority")


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

    # Concurrency limiter (a tenant's `limits.concurrency`): how long a request's slot is leased. Set it above
    # the longest request: when a worker dies mid-request, its slot comes back after this long.
    concurrency_lease_ms: int = Field(default=30_000, ge=1, le=86_400_000)
    # Priority load shedder: /v1 requests in flight per worker at full capacity (0: no shedding), and the
    # share of it (percent) up to which `default` and `sheddable` requests are admitted (`critical`: all).
    shed_capacity: int = Field(default=0, ge=0)
    shed_default_pct: int = Field(default=80, ge=1, le=100)
    shed_sheddable_pct: int = Field(default=50, ge=1, le=100)

    @model_validator(mode="after")
    def _sheddable_is_shed_first(self) -> "RateLimitSettings":
        if self.shed_sheddable_pct > self.shed_default_pct:
            raise ValueError(f"SAASLAB_SHED_SHEDDABLE_PCT ({self.shed_sheddable_pct}) must not exceed "
                             f"SAASLAB_SHED_DEFAULT_PCT ({self.shed_default_pct}): sheddable requests go first")
        return self


PATTERN = Pattern(
    slug="ratelimit",
    title="Tenant rate limiting",
    question=("Which limiting algorithm keeps a tenant within its quota most accurately, at what memory cost, "
              "and which ones stay correct under concurrency and clock skew?"),
    axes=(ALGORITHM, SHEDDING),
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
