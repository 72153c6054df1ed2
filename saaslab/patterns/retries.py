"""retries: client backoff policies, retry budgets and metastable collapse, simulated and against the service's
conditional writes (`PATCH /v1/projects/{id}` with `If-Match`) and reads."""

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
        # How a live client writes what it read; retries has no service face of its own (it drives tenancy's
        # projects), so this axis has no setting either.
        Axis(None, (
            Design("if_match", "write with If-Match: the version read, refused (412) if it moved"),
            Design("blind_write", "write with If-Match: *, over whatever version is there", unsafe=True),
        ), default="if_match"),
    ),
    core="reference_impl.retries.core",
    invariants="reference_impl.retries.invariants",
    simulation="scenarios.retries",
    live="saaslab.live.retries",
    loadtest="loadtests/retries.py",
    report="saaslab.reports.retries",
    notebook="notebooks/retries.ipynb",
)
