"""The plan of a live retries run (`loadtests/retries.py`), importable without Locust.

Two experiments, the simulation's (`scenarios/retries.py`) against the reference service:

* `ContentionPlan`: Brooker's experiment. Per policy, client count, seed and trial, a fresh project
  and `clients` clients that each read it (`GET /v1/projects/{id}`, its `ETag`), write their tag over
  that version (`PATCH` with `If-Match`) and, on 412, back off by the policy and read again, until
  their write lands. `blind` writes with `If-Match: *` instead: the deliberately unsafe client,
  whose lost updates the checker (reference_impl/retries/invariants.py) must catch.
* `SpikePlan`: the metastability map. Per client design, load and trigger length, Poisson arrivals
  of reads at `load` x the simulation's capacity; a lab-mode delay at `tenancy.query` makes every read
  hold its scheduler slot `base_delay_ms` (the simulation's service time), raised to `spike_delay_ms`
  for the trigger's length; clients time out, back off and retry by the design.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from reference_impl.retries.core import BROOKER_POLICIES
from scenarios import retries as scenario

PLAN_FIELDS = ("contention", "metastability")


class ContentionPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: tuple[str, ...] = BROOKER_POLICIES
    clients: tuple[int, ...] = (10,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    trials: int = Field(default=1, ge=1)
    parallel_seeds: bool = False
    """Run a policy's seeds at once, each on its own project (quick runs): the service then serves
    seeds x clients clients, which the report says."""
    blind: bool = False


class SpikePlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    designs: tuple[str, ...] = ("no_backoff", "exponential", "full_jitter", "full_jitter+budget",
                                "full_jitter+breaker")
    loads: tuple[float, ...] = (0.5, 0.7, 0.9)
    triggers_s: tuple[int, ...] = (2, 4)
    timeline: dict[str, int] = Field(default_factory=lambda: {
        "trigger_at_s": scenario.TIMELINE.trigger_at_s, "recovery_s": scenario.TIMELINE.recovery_s,
        "hold_s": scenario.TIMELINE.hold_s})
    seed: int = 1
    base_delay_ms: int = round(scenario.SERVICE_MS)
    spike_delay_ms: int = round(scenario.SPIKE_FACTOR * (scenario.SERVICE_MS + scenario.OVERHEAD_MS)
                                - scenario.OVERHEAD_MS)
    """The simulation multiplies the whole service time (work + overhead) by SPIKE_FACTOR; the live
    overhead stays what it is, so the delay grows by the rest."""

    def timeline_of(self) -> scenario.Timeline:
        return scenario.Timeline(**self.timeline)

    def cell_s(self, trigger_s: int) -> float:
        t = self.timeline_of()
        return t.trigger_at_s + trigger_s + t.recovery_s + t.hold_s


class RetriesPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    contention: ContentionPlan | None = None
    metastability: SpikePlan | None = None

    @classmethod
    def of(cls, workload: dict[str, Any]) -> RetriesPlan:
        """A run's `workload` as a plan; an empty one is the quick plan (what plain Locust runs)."""
        return cls.model_validate(workload) if workload else QUICK

    def budget_s(self) -> float:
        """A generous bound on how long the plan runs (Locust's --run-time)."""
        total = 0.0
        c = self.contention
        if c is not None:
            # Exponential backoff without jitter at 100 clients takes about a minute per trial (the simulation's).
            per_trial = sum(2.0 + 0.7 * n for n in c.clients) * len(c.policies) * c.trials
            total += per_trial * (1 if c.parallel_seeds else len(c.seeds))
        m = self.metastability
        if m is not None:
            lifetime_s = scenario.request_lifetime_us(scenario.client_design("full_jitter")) / 1e6
            total += sum(m.cell_s(t) + lifetime_s + 1 for t in m.triggers_s) * len(m.designs) * len(m.loads)
        return total


QUICK_TIMELINE = scenario.TIMELINES["quick"]
QUICK = RetriesPlan(
    contention=ContentionPlan(clients=(10,), parallel_seeds=True),
    metastability=SpikePlan(designs=("no_backoff", "full_jitter+budget"), loads=(0.6,), triggers_s=(2,),
                            timeline={"trigger_at_s": QUICK_TIMELINE.trigger_at_s,
                                      "recovery_s": QUICK_TIMELINE.recovery_s, "hold_s": QUICK_TIMELINE.hold_s}),
)
FULL = RetriesPlan(contention=ContentionPlan(clients=(10, 50, 100)), metastability=SpikePlan())
UNSAFE = RetriesPlan(contention=ContentionPlan(policies=("full_jitter",), clients=(10,), seeds=(0,), blind=True))
