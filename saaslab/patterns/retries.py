"""retries: client backoff policies, retry budgets and metastable collapse (simulation only)."""

from saaslab.patterns.base import Axis, Design, Pattern

PATTERN = Pattern(
    slug="retries",
    title="Retries and backoff",
    question=("Which backoff policy does the least work and finishes soonest under contention, and which "
              "policies keep a system from staying collapsed after a latency spike?"),
    axes=(
        Axis(None, (
            Design("no_backoff", "no backoff: retry at once"),
            Design("fixed", "a fixed delay"),
            Design("exponential", "exponential backoff, no jitter"),
            Design("equal_jitter", "half the exponential delay plus a random half"),
            Design("full_jitter", "a random delay up to the exponential one"),
            Design("decorrelated_jitter", "a random delay grown from the previous one"),
        ), default="full_jitter"),
    ),
    core="reference_impl.retries.core",
    simulation="scenarios.retries",
    report="saaslab.reports.retries",
    notebook="notebooks/retries.ipynb",
)
