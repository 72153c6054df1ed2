"""ratelimit: five limiting algorithms, the concurrency limiter and the priority load shedder."""

from saaslab.patterns.base import Axis, Design, Pattern

PATTERN = Pattern(
    slug="ratelimit",
    title="Tenant rate limiting",
    question=("Which limiting algorithm keeps a tenant within its quota most accurately, at what memory cost, "
              "and which ones stay correct under concurrency and clock skew?"),
    axes=(
        Axis("ratelimit", (
            Design("fixed_window", "a counter per aligned window"),
            Design("sliding_log", "a timestamp per admitted request"),
            Design("sliding_counter", "two windows' counters, weighted"),
            Design("token_bucket", "tokens refilled continuously"),
            Design("gcra", "the generic cell rate algorithm: one theoretical arrival time"),
            Design("naive", "fixed_window read and written in two round trips", unsafe=True),
        ), default="token_bucket", extra_choices=("off",)),
    ),
    core="reference_impl.ratelimit.core",
    invariants="reference_impl.ratelimit.invariants",
    service="reference_impl.ratelimit.wiring",
    simulation="scenarios.ratelimit",
    live="saaslab.live.ratelimit",
    loadtest="loadtests/ratelimit.py",
    report="saaslab.reports.ratelimit",
    notebook="notebooks/ratelimit.ipynb",
    bench="bench.ratelimit",
    settings=("ratelimit_mode", "ratelimit_failure", "ratelimit_timeout_ms", "ratelimit_breaker_fail_max",
              "ratelimit_breaker_reset_s"),
)
