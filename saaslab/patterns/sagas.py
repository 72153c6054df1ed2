"""sagas: a checkout across inventory, payments and shipping, each with its own PostgreSQL database."""

from typing import Literal

from pydantic import BaseModel, Field

from saaslab.patterns.base import Axis, Design, Pattern

DESIGN = Axis("saga", (
    Design("orchestration", "a durable orchestrator: the saga log in PostgreSQL, resumed by recovery after a crash"),
    Design("choreography", "participants react to events: transactional outboxes relayed to Redis Streams, "
                           "inboxes for deduplication, a dead-letter stream"),
    Design("twopc", "two-phase commit across the three databases (PREPARE TRANSACTION), a coordinator log, "
                    "recovery of in-doubt transactions"),
    Design("unsafe", "dual writes straight to the three databases: no log, no compensation", unsafe=True),
), default="orchestration")

RetryPolicyName = Literal["none", "fixed", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter"]
"""The backoff policies of reference_impl/retries/core.py (`POLICIES`)."""


class SagaSettings(BaseModel):
    """docs/contract.md "Sagas": the coordination design behind POST /v1/orders, and how it retries."""

    saga: DESIGN.literal = DESIGN.default
    # Each attempt of a step's action or compensation is abandoned (outcome: timeout) after this long.
    saga_step_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    # Backoff between attempts of a step (reference_impl/retries/core.py), as Temporal's activity retry:
    # base, doubling, capped at 100x base (scaled to the lab: 100 ms instead of 1 s).
    saga_retry_policy: RetryPolicyName = "exponential"
    saga_retry_base_ms: float = Field(default=100.0, gt=0, le=60_000)
    saga_retry_cap_ms: float = Field(default=10_000.0, gt=0, le=3_600_000)
    # Attempts of an action (the first included) before the saga gives up and compensates.
    # Compensations and the retriable steps after the pivot are retried without limit.
    saga_max_attempts: int = Field(default=5, ge=1, le=1000)
    # How often recovery looks for unfinished sagas whose driver is gone (and at start-up, once).
    saga_recovery_interval_s: float = Field(default=1.0, gt=0, le=3600)
    # A driver holds a saga this long per step; past it, recovery takes the saga over (a crashed worker).
    saga_lease_s: float = Field(default=10.0, gt=0, le=3600)
    # choreography: a message delivered this many times without acknowledgement goes to the dead-letter stream.
    saga_dead_letter_attempts: int = Field(default=5, ge=1, le=1000)
    # choreography: a delivered but unacknowledged message is reclaimed by another consumer after this long.
    saga_visibility_timeout_s: float = Field(default=10.0, gt=0, le=3600)


PATTERN = Pattern(
    slug="sagas",
    title="Sagas and distributed transactions",
    question=("When a checkout spans inventory, payments and shipping, each owning its own database, which "
              "coordination design keeps every order all-done or all-undone under crashes, timeouts and duplicate "
              "messages, and what does each cost in latency, throughput and time spent holding locks?"),
    axes=(DESIGN,),
    core="reference_impl.sagas.core",
    invariants="reference_impl.sagas.invariants",
    service="reference_impl.sagas.wiring",
    live="saaslab.live.sagas",
    bench="bench.sagas",
    loadtest="loadtests/sagas.py",
    simulation="scenarios.sagas",
    report="saaslab.reports.sagas",
    notebook="notebooks/sagas.ipynb",
    settings=SagaSettings,
)
