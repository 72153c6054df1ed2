"""tenancy: isolation designs and the noisy neighbour."""

from pydantic import BaseModel, Field

from saaslab.patterns.base import Axis, Design, Pattern

ISOLATION = Axis("isolation", (
    Design("filtered", "shared tables; the repository filters every query by tenant"),
    Design("rls", "shared tables with PostgreSQL row-level security"),
    Design("schema", "a schema per tenant"),
    Design("leaky", "forgets the tenant filter on reads by id", unsafe=True),
), default="filtered")
SCHEDULER = Axis("scheduler", (
    Design("fifo", "pooled request slots, first come first served"),
    Design("bulkhead", "a per-tenant cap on concurrent slots"),
    Design("wfq", "start-time fair queuing weighted by plan"),
), default="fifo")


class TenancySettings(BaseModel):
    isolation: ISOLATION.literal = ISOLATION.default
    scheduler: SCHEDULER.literal = SCHEDULER.default
    # Concurrent request slots the scheduler hands out (the service's "workers").
    scheduler_slots: int = Field(default=8, ge=1)
    # Per-tenant cap for the bulkhead design.
    bulkhead_per_tenant: int = Field(default=2, ge=1)


PATTERN = Pattern(
    slug="tenancy",
    title="Multi-tenancy",
    question=("When one tenant bursts to 10x its share, which scheduler keeps the other tenants' latency "
              "near what they see alone?"),
    axes=(ISOLATION, SCHEDULER),
    core="reference_impl.tenancy.core",
    invariants="reference_impl.tenancy.invariants",
    service="reference_impl.tenancy.wiring",
    simulation="scenarios.tenancy",
    live="saaslab.live.tenancy",
    loadtest="loadtests/tenancy.py",
    report="saaslab.reports.tenancy",
    notebook="notebooks/tenancy.ipynb",
    bench="bench.tenancy",
    settings=TenancySettings,
)
