"""idempotency: Idempotency-Key on every /v1 POST, payments against a lab provider."""

from saaslab.patterns.base import Axis, Design, Pattern

PATTERN = Pattern(
    slug="idempotency",
    title="Idempotency and retries of payments",
    question=("How often does each idempotency design charge a payment twice, or charge it without recording it, "
              "when clients time out and retry, the provider times out after charging and workers crash between "
              "recovery points, across load levels, and what does the protection cost?"),
    axes=(
        Axis("idempotency", (
            Design("none", "every request executes, retries included", unsafe=True),
            Design("redis", "claims and stored responses in Redis"),
            Design("postgres", "claims, recovery points and responses in PostgreSQL, beside the ledger"),
        ), default="postgres"),
    ),
    core="reference_impl.idempotency.core",
    invariants="reference_impl.idempotency.invariants",
    service="reference_impl.idempotency.wiring",
    simulation="scenarios.idempotency",
    live="saaslab.live.idempotency",
    loadtest="loadtests/idempotency.py",
    report="saaslab.reports.idempotency",
    notebook="notebooks/idempotency.ipynb",
    bench="bench.idempotency",
    settings=("idempotency_retention_s", "idempotency_lock_timeout_s"),
)
