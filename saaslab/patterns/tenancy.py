"""tenancy: isolation designs and the noisy neighbour."""

from saaslab.patterns.base import Axis, Design, Pattern

PATTERN = Pattern(
    slug="tenancy",
    title="Multi-tenancy",
    question=("When one tenant bursts to 10x its share, which scheduler keeps the other tenants' latency "
              "near what they see alone?"),
    axes=(
        Axis("isolation", (
            Design("filtered", "shared tables; the repository filters every query by tenant"),
            Design("rls", "shared tables with PostgreSQL row-level security"),
            Design("schema", "a schema per tenant"),
            Design("leaky", "forgets the tenant filter on reads by id", unsafe=True),
        ), default="filtered"),
        Axis("scheduler", (
            Design("fifo", "pooled request slots, first come first served"),
            Design("bulkhead", "a per-tenant cap on concurrent slots"),
            Design("wfq", "start-time fair queuing weighted by plan"),
        ), default="fifo"),
    ),
    core="reference_impl.tenancy.core",
    invariants="reference_impl.tenancy.invariants",
    service="reference_impl.tenancy.wiring",
    simulation="scenarios.tenancy",
    live="saaslab.live.tenancy",
    loadtest="loadtests/tenancy.py",
    report="saaslab.reports.tenancy",
    notebook="notebooks/tenancy.ipynb",
    bench="bench.tenancy",
    settings=("scheduler_slots", "bulkhead_per_tenant"),
)
