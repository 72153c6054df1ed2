"""Settings from `SAASLAB_*` environment variables (pydantic-settings).

One `Settings` object is built at the edge (CLI, test fixture, ASGI factory) and passed down;
nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from saaslab.patterns import axis

# The design choices come from the registry (saaslab/patterns/): each pattern declares its designs once,
# including the unsafe one its checker must catch (tenancy's `leaky`, ratelimit's `naive`, idempotency's `none`).
IsolationDesign = Literal[axis("isolation").choices]  # type: ignore[valid-type]
SchedulerDesign = Literal[axis("scheduler").choices]  # type: ignore[valid-type]
RateLimitDesign = Literal[axis("ratelimit").choices]  # type: ignore[valid-type]
IdempotencyDesign = Literal[axis("idempotency").choices]  # type: ignore[valid-type]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAASLAB_", extra="ignore")

    # Where the servers are. Unset means: start the embedded ones under `state_dir`.
    database_url: str | None = None
    redis_url: str | None = None
    state_dir: Path = Path(".saaslab")

    # Prefix for every Redis key, so several runs can share one Redis without clashing.
    redis_prefix: str = "saaslab"

    admin_token: str | None = None
    lab_mode: bool = False

    # tenancy
    isolation: IsolationDesign = "filtered"
    scheduler: SchedulerDesign = "fifo"
    # Concurrent request slots the scheduler hands out (the service's "workers").
    scheduler_slots: int = Field(default=8, ge=1)
    # Per-tenant cap for the bulkhead design.
    bulkhead_per_tenant: int = Field(default=2, ge=1)

    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    max_body_bytes: int = 1024 * 1024

    # ratelimit (CONTRACT.md "Rate limiting"); `naive` is the unsafe two-round-trip design.
    ratelimit: RateLimitDesign = "token_bucket"
    # `shadow` decides and reports (headers, metrics) but never refuses.
    ratelimit_mode: Literal["enforce", "shadow"] = "enforce"
    # When Redis cannot decide: `open` admits, `closed` answers 503.
    ratelimit_failure: Literal["open", "closed"] = "open"
    ratelimit_timeout_ms: int = Field(default=50, ge=1)
    # The limiter's circuit breaker: consecutive failures that open it, and how long it stays open.
    ratelimit_breaker_fail_max: int = Field(default=5, ge=1)
    ratelimit_breaker_reset_s: float = Field(default=1.0, gt=0)

    # idempotency (CONTRACT.md "Idempotency"): the design behind every POST under /v1 with Idempotency-Key.
    idempotency: IdempotencyDesign = "postgres"
    # How long a key's record (and its stored response) is kept after its claim.
    # At most 2**52 µs (about 142 years), which keeps every time exact in the Redis design's Lua.
    idempotency_retention_s: float = Field(default=86400.0, gt=0, le=2**52 // 1_000_000)
    # A claim unfinished this long counts as abandoned: a retry or the completer may take it over.
    idempotency_lock_timeout_s: float = Field(default=90.0, gt=0)

    # Concurrency limiter (CONTRACT.md: a tenant's `limits.concurrency`): how long a request's slot is leased.
    # Set it above the longest request: when a worker dies mid-request, its slot comes back after this long.
    concurrency_lease_ms: int = Field(default=30_000, ge=1, le=86_400_000)
    # Priority load shedder (CONTRACT.md): /v1 requests in flight per worker at full capacity (0: no shedding),
    # and the share of it (percent) up to which `default` and `sheddable` requests are admitted (`critical`: all).
    shed_capacity: int = Field(default=0, ge=0)
    shed_default_pct: int = Field(default=80, ge=1, le=100)
    shed_sheddable_pct: int = Field(default=50, ge=1, le=100)

    @model_validator(mode="after")
    def _sheddable_is_shed_first(self) -> Settings:
        if self.shed_sheddable_pct > self.shed_default_pct:
            raise ValueError(f"SAASLAB_SHED_SHEDDABLE_PCT ({self.shed_sheddable_pct}) must not exceed "
                             f"SAASLAB_SHED_DEFAULT_PCT ({self.shed_default_pct}): sheddable requests go first")
        return self

    @model_validator(mode="after")
    def _a_claim_outlives_its_lock(self) -> Settings:
        if self.idempotency_lock_timeout_s >= self.idempotency_retention_s:
            raise ValueError(f"SAASLAB_IDEMPOTENCY_LOCK_TIMEOUT_S ({self.idempotency_lock_timeout_s:g}) must be "
                             f"below SAASLAB_IDEMPOTENCY_RETENTION_S ({self.idempotency_retention_s:g})")
        return self
