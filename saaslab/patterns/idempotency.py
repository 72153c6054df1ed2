"""idempotency: Idempotency-Key on every /v1 POST, payments against a lab provider."""

from pydantic import BaseModel, Field, model_validator

from saaslab.patterns.base import Axis, Design, Pattern

DESIGN = Axis("idempotency", (
    Design("none", "every request executes, retries included", unsafe=True),
    Design("redis", "claims and stored responses in Redis"),
    Design("postgres", "claims, recovery points and responses in PostgreSQL, beside the ledger"),
), default="postgres")


class IdempotencySettings(BaseModel):
    """docs/contract.md "Idempotency": the design behind every POST under /v1 with Idempotency-Key."""

    idempotency: DESIGN.literal = DESIGN.default
    # How long a key's record (and its stored response) is kept after its claim.
    # At most 2**52 µs (about 142 years), which keeps every time exact in the Redis design's Lua.
    idempotency_retention_s: float = Field(default=86400.0, gt=0, le=2**52 // 1_000_000)
    # A claim unfinished this long counts as abandoned: a retry or the completer may take it over.
    idempotency_lock_timeout_s: float = Field(default=90.0, gt=0)

    @model_validator(mode="after")
    def _a_claim_outlives_its_lock(self) -> "IdempotencySettings":
        if self.idempotency_lock_timeout_s >= self.idempotency_retention_s:
            raise ValueError(f"SAASLAB_IDEMPOTENCY_LOCK_TIMEOUT_S ({self.idempotency_lock_timeout_s:g}) must be "
                             f"below SAASLAB_IDEMPOTENCY_RETENTION_S ({self.idempotency_retention_s:g})")
        return self


PATTERN = Pattern(
    slug="idempotency",
    title="Idempotency and retries of payments",
    question=("How often does each idempotency design charge a payment twice, or charge it without recording it, "
              "when clients time out and retry, the provider times out after charging and workers crash between "
              "recovery points, across load levels, and what does the protection cost?"),
    axes=(DESIGN,),
    core="reference_impl.idempotency.core",
    invariants="reference_impl.idempotency.invariants",
    service="reference_impl.idempotency.wiring",
    simulation="scenarios.idempotency",
    live="saaslab.live.idempotency",
    loadtest="loadtests/idempotency.py",
    report="saaslab.reports.idempotency",
    notebook="notebooks/idempotency.ipynb",
    bench="bench.idempotency",
    settings=IdempotencySettings,
)
