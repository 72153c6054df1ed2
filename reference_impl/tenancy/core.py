"""The tenancy decision core: pure code, no I/O, no clock reads (the twin rule, docs/design.md).

Three kinds of decisions live here:

* Who is the caller? `new_api_key` and `hash_api_key` make and recognise a tenant's key (the rule
  that the key alone names the tenant is reference_impl/common/identity.py's, shared by every route).
* Who runs next? A *scheduler* owns `slots` concurrent work slots (the service's request slots,
  the simulation's workers) and decides which queued request takes a slot when one frees:

  - `FifoScheduler`: one shared queue; a bursting tenant's backlog delays everyone behind it.
  - `BulkheadScheduler`: FIFO, but no tenant holds more than `per_tenant` slots at once.
  - `WeightedFairScheduler`: start-time fair queuing (Goyal et al., SFQ) over per-tenant queues,
    so each backlogged tenant gets slots in proportion to its weight.

* Which version may a write replace? `etag` and `if_match_versions` turn a project's version into
  the `ETag` a read carries and an `If-Match` header back into the versions a conditional write accepts.

A scheduler is a state machine driven by three calls: `submit` (a request arrives), `dispatch`
(a slot is free: which request gets it?) and `release` (a request finished). The caller owns the
clock and the waiting: asyncio futures in the service, SimPy events in the simulation.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from saaslab.scheduling import Job, Scheduler

# ---------------------------------------------------------------------------------------------
# Identity


API_KEY_PREFIX = "sk_"


def new_api_key() -> str:
    """An unguessable API key (32 random bytes). Only its hash is ever stored."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    """SHA-256 of the key. Keys carry 256 bits of entropy, so a fast hash is enough (no salt needed)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Optimistic concurrency: a project's version as an HTTP entity tag (RFC 9110 sections 8.8.3, 13.1.1)


ANY_VERSION = None
"""What `If-Match: *` asks for: any current version (the write is unconditional on the version)."""


def etag(version: int) -> str:
    """The strong entity tag of a row's version: `"7"`."""
    return f'"{version}"'


def if_match_versions(header: str) -> frozenset[int] | None:
    """The versions an `If-Match` header accepts; None for `*` (any current version).

    A weak tag (`W/"7"`) never matches, since If-Match compares strongly; a tag this service did not
    issue, or a malformed header, accepts no version: the precondition fails (412) rather than the
    request being refused as malformed, so a client that sent garbage learns to read again.
    """
    text = header.strip()
    if text == "*":
        return ANY_VERSION
    versions = set()
    for part in text.split(","):
        tag = part.strip()
        if len(tag) >= 3 and tag[0] == tag[-1] == '"' and tag[1:-1].isdigit() and tag[1:-1].isascii():
            value = int(tag[1:-1])
            if 0 < value < 2**63:
                versions.add(value)
    return frozenset(versions)


# ---------------------------------------------------------------------------------------------
# Schedulers (the job they queue and the calls they answer: saaslab/scheduling.py)


@dataclass
class _Base:
    slots: int
    busy: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    _seq: int = 0

    def _started(self, job: Job) -> Job:
        self.busy += 1
        self.in_flight[job.tenant] = self.in_flight.get(job.tenant, 0) + 1
        return job

    def release(self, tenant: str) -> None:
        if self.in_flight.get(tenant, 0) <= 0 or self.busy <= 0:
            raise ValueError(f"release for tenant {tenant!r} without a started job")
        self.busy -= 1
        self.in_flight[tenant] -= 1

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _queue_of(self, job: Job) -> deque[Job] | None:
        raise NotImplementedError

    def withdraw(self, job: Job) -> bool:
        """Take a still-queued job back out because its caller stopped waiting; False if it is not queued.

        The service calls this when a waiting request is cancelled (client gone, timeout), so the queue
        never holds work nobody will run. Under WFQ the tenant keeps the virtual time the job was
        charged: a request that queued and then gave up still counted against its tenant's share.
        """
        queue = self._queue_of(job)
        if queue is None:
            return False
        for i, queued in enumerate(queue):
            if queued is job:  # identity: two jobs may compare equal field by field
                del queue[i]
                return True
        return False


@dataclass
class FifoScheduler(_Base):
    """First come, first served across all tenants."""

    design: str = "fifo"
    _queue: deque[Job] = field(default_factory=deque)

    def submit(self, job: Job) -> None:
        job.seq = self._next_seq()
        self._queue.append(job)

    def dispatch(self) -> Job | None:
        if self.busy >= self.slots or not self._queue:
            return None
        return self._started(self._queue.popleft())

    def queued(self) -> int:
        return len(self._queue)

    def _queue_of(self, job: Job) -> deque[Job] | None:
        return self._queue


@dataclass
class BulkheadScheduler(_Base):
    """FIFO among tenants below their cap: one tenant can fill at most `per_tenant` slots."""

    per_tenant: int = 2
    design: str = "bulkhead"
    _queues: dict[str, deque[Job]] = field(default_factory=dict)

    def submit(self, job: Job) -> None:
        job.seq = self._next_seq()
        self._queues.setdefault(job.tenant, deque()).append(job)

    def dispatch(self) -> Job | None:
        if self.busy >= self.slots:
            return None
        best: deque[Job] | None = None
        for tenant, q in self._queues.items():
            if q and self.in_flight.get(tenant, 0) < self.per_tenant and (best is None or q[0].seq < best[0].seq):
                best = q
        return self._started(best.popleft()) if best is not None else None

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _queue_of(self, job: Job) -> deque[Job] | None:
        return self._queues.get(job.tenant)


# Virtual-time tags are integers: cost_us * TAG_SCALE // weight keeps them exact and comparable.
TAG_SCALE = 1000


@dataclass
class WeightedFairScheduler(_Base):
    """Start-time fair queuing: serve the queued request with the smallest virtual start tag.

    A request's start tag is max(virtual time, its tenant's previous finish tag); its finish tag
    adds cost/weight. Virtual time is the start tag of the request last dispatched. A tenant that
    floods the queue only pushes its own tags into the future.
    """

    weights: dict[str, int] = field(default_factory=dict)
    default_weight: int = 1
    design: str = "wfq"
    _queues: dict[str, deque[Job]] = field(default_factory=dict)
    _last_finish: dict[str, int] = field(default_factory=dict)
    _vtime: int = 0

    def weight(self, tenant: str) -> int:
        return max(1, self.weights.get(tenant, self.default_weight))

    def submit(self, job: Job) -> None:
        job.seq = self._next_seq()
        start = max(self._vtime, self._last_finish.get(job.tenant, 0))
        job.start_tag = start
        self._last_finish[job.tenant] = start + job.cost_us * TAG_SCALE // self.weight(job.tenant)
        self._queues.setdefault(job.tenant, deque()).append(job)

    def dispatch(self) -> Job | None:
        if self.busy >= self.slots:
            return None
        best: deque[Job] | None = None
        for q in self._queues.values():
            if q and (best is None or (q[0].start_tag, q[0].seq) < (best[0].start_tag, best[0].seq)):
                best = q
        if best is None:
            return None
        job = best.popleft()
        self._vtime = max(self._vtime, job.start_tag)
        return self._started(job)

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _queue_of(self, job: Job) -> deque[Job] | None:
        return self._queues.get(job.tenant)


SCHEDULER_DESIGNS = ("fifo", "bulkhead", "wfq")


def make_scheduler(design: str, slots: int, *, per_tenant: int = 2,
                   weights: Mapping[str, int] | None = None) -> Scheduler:
    """Build a scheduler by design name; the one factory both the service and the simulation use."""
    if design == "fifo":
        return FifoScheduler(slots=slots)
    if design == "bulkhead":
        return BulkheadScheduler(slots=slots, per_tenant=per_tenant)
    if design == "wfq":
        return WeightedFairScheduler(slots=slots, weights=dict(weights or {}))
    raise ValueError(f"unknown scheduler design {design!r}; choose one of {', '.join(SCHEDULER_DESIGNS)}")


PLANS = ("free", "pro", "enterprise")
PLAN_WEIGHTS = {"free": 1, "pro": 2, "enterprise": 4}
"""A plan's share under weighted fair queuing (tiers, not per-tenant quotas: AWS SaaS Factory)."""
