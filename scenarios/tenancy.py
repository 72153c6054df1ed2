"""Tenancy scenario: the noisy neighbour.

Question: when one tenant bursts to 10x its share, which scheduler keeps the other tenants'
latency near what they see alone: pooled FIFO workers, per-tenant bulkheads, or weighted fair
queuing? The modelled server is `SLOTS` workers, each request holding one for about `SERVICE_MS`;
the live service is set up the same way (scheduler slots plus a lab-mode delay at the
`tenancy.query` point), so the simulated and measured runs answer the same question.

The workload description below is shared with `loadtests/tenancy.py`.
"""

from __future__ import annotations

from scenarios.kernel.workload import Burst, TenantSpec, Workload

PATTERN = "tenancy"
DESIGNS = ("fifo", "bulkhead", "wfq")

SLOTS = 4
SERVICE_MS = 20.0
CAPACITY_RPS = SLOTS * 1000.0 / SERVICE_MS
BULKHEAD_PER_TENANT = 2
NOISY = "noisy"
QUIET = ("quiet1", "quiet2", "quiet3", "quiet4")
BURST_MULTIPLIER = 10.0
LOAD_POINTS = (0.3, 0.5, 0.7)
"""Offered load before the burst, as a fraction of capacity."""


def noisy_neighbour(load_point: float, *, duration_s: float = 15.0, burst_start_s: float = 5.0,
                    burst_length_s: float = 5.0, burst: bool = True) -> Workload:
    """Five equal tenants at `load_point` of capacity; `noisy` sends 10x its rate during the burst.

    With `burst=False` it is the solo baseline: the same traffic without the burst.
    """
    share = load_point * CAPACITY_RPS / (1 + len(QUIET))
    bursts = (Burst(burst_start_s, burst_length_s, BURST_MULTIPLIER),) if burst else ()
    tenants = (TenantSpec(NOISY, plan="pro", rate=share, bursts=bursts),
               *(TenantSpec(q, plan="pro", rate=share) for q in QUIET))
    return Workload(tenants=tenants, process="poisson", duration_s=duration_s,
                    params={"load_point": load_point, "slots": SLOTS, "service_ms": SERVICE_MS,
                            "burst_multiplier": BURST_MULTIPLIER if burst else 1.0,
                            "burst_start_s": burst_start_s, "burst_length_s": burst_length_s})
