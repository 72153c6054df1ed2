"""The checkout saga as pure code: its steps, and the step machine every design drives.

No I/O and no clock of its own: the service's drivers (reference_impl/sagas/designs.py) run it against
PostgreSQL and Redis, the simulation against simulated stores, both with times in integer µs.

The saga (`CHECKOUT`), after Garcia-Molina & Salem: it ends as T1..Tn, or as T1..Tj then Cj..C1.

| step       | participant | action     | compensation |
| ---------- | ----------- | ---------- | ------------ |
| `reserve`  | inventory   | reserve    | release      |
| `charge`   | payments    | charge     | refund       |
| `schedule` | shipping    | schedule   | cancel       |
| `commit`   | inventory   | commit     | (none)       |

`schedule` is the pivot: once it is done the saga can only go forward. `commit` (the reservation's
units leave stock as shipped) has no compensation; it is a *retriable* step, retried until it
succeeds and never refused. Every participant operation is idempotent by the step's key
(`step_key(saga_id, step)`, the same key for an action and its compensation).

Driving a saga (`SagaState`, immutable):

    state = start(saga_id, now_us)
    while True:
        cmd = next_command(state, now_us)
        match cmd:
            case Do(step) | Undo(step): outcome = <run it, bounded by policy.timeout_us(step)>
                                        state = apply(state, outcome, now_us, policy)   # then persist it
            case Wait(until_us): <sleep, or let recovery pick the saga up at until_us>
            case Finished(status): break

The driver persists `state` after each `apply`, before the next command runs. Outcomes:

* `ok`: the action or compensation took effect (or had already: idempotent).
* `refused`: a business refusal of an action (out of stock, card declined, a tombstone left by an
  early compensation): certainly no effect. The done steps are compensated in reverse order.
* `error`, `timeout`: transient, or unknown. An action that timed out may have happened, so a step
  counts as *begun* as soon as the machine points at it (Temporal's rule: register the compensation
  before calling the activity): if the saga aborts, a begun step is compensated even if it was never
  seen to succeed; its compensation is a no-op when nothing happened. An action is retried after
  the policy's backoff until `policy.max_attempts`; then the saga gives up and compensates. A
  compensation is retried until it succeeds (capped backoff, no limit), then the next one runs.
  A retriable step is retried without limit too.

Terminal statuses (docs/contract.md, "Sagas"): `completed` (every step done), `compensated` (every
begun step undone), `failed` (the first step was refused: rejected before any effect). Until then a
saga is `pending`.

Jitter is seeded from the saga id, the step and the attempt, so a recovered saga waits what the
crashed driver would have waited, and a simulation replays the same waits.

Fault points (`FAULT_POINTS`, one scheme for every design; lab mode arms them, see
reference_impl/common/faults.py): `sagas.<step>.before|after` around each action,
`sagas.<step>.undo.before|after` around each compensation (an `after` point takes every mode: a
crash, error or delay once the effect is done, or `timeout_after_effect`), `sagas.charge.provider`
(the provider declines, is slow, or charges and loses its answer), `sagas.orchestrator.*`,
`sagas.coordinator.*` (two-phase commit), `sagas.relay.*` (choreography's outbox relay) and
`sagas.stream.*` (its deliveries: duplicated, reordered, failed). A
compensation "that fails N times before it succeeds" is an `error` fault with `count: N` at
`sagas.<step>.undo.before`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from reference_impl.retries.core import Backoff, ExponentialBackoff, make_policy

US_PER_MS = 1_000
US_PER_S = 1_000_000

# ---------------------------------------------------------------------------------------------
# The saga definition

Participant = Literal["inventory", "payments", "shipping"]
PARTICIPANTS: tuple[Participant, ...] = ("inventory", "payments", "shipping")


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    participant: Participant
    action: str
    compensation: str | None
    """None: a retriable step after the pivot, retried until it succeeds."""
    timeout_us: int | None = None
    """Overrides the policy's per-attempt timeout for this step."""

    @property
    def retriable(self) -> bool:
        return self.compensation is None


CHECKOUT: tuple[Step, ...] = (
    Step("reserve", "inventory", "reserve", "release"),
    Step("charge", "payments", "charge", "refund"),
    Step("schedule", "shipping", "schedule", "cancel"),
    Step("commit", "inventory", "commit", None),
)
STEP_NAMES = tuple(s.name for s in CHECKOUT)


def step_named(name: str, saga: tuple[Step, ...] = CHECKOUT) -> Step:
    for s in saga:
        if s.name == name:
            return s
    raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in saga)}")


def step_key(saga_id: str, step: Step | str) -> str:
    """The idempotency key of a step's action and of its compensation at every participant."""
    return f"{saga_id}:{step if isinstance(step, str) else step.name}"


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    qty: int


@dataclass(frozen=True, slots=True)
class Order:
    """What a checkout asks for; `id` is the saga's id."""

    id: str
    tenant_id: str
    items: tuple[Item, ...]
    amount: int
    currency: str

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("an order needs at least one item")
        if any(i.qty <= 0 for i in self.items) or self.amount <= 0:
            raise ValueError("quantities and the amount must be > 0")

    def units(self) -> dict[str, int]:
        """Quantity per SKU (an order may name a SKU twice)."""
        out: dict[str, int] = {}
        for i in self.items:
            out[i.sku] = out.get(i.sku, 0) + i.qty
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tenant_id": self.tenant_id, "items": [{"sku": i.sku, "qty": i.qty} for i in self.items],
                "amount": self.amount, "currency": self.currency}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Order:
        return cls(d["id"], d["tenant_id"], tuple(Item(i["sku"], int(i["qty"])) for i in d["items"]),
                   int(d["amount"]), d["currency"])


# ---------------------------------------------------------------------------------------------
# Policy

@dataclass(frozen=True, slots=True)
class SagaPolicy:
    """Timeouts and retries. Defaults follow Temporal's activity retry (base, x2, capped at 100x
    base), scaled to the lab: base 100 ms instead of 1 s."""

    step_timeout_us: int = 5 * US_PER_S
    action_backoff: Backoff = field(default_factory=lambda: ExponentialBackoff(100 * US_PER_MS, 10 * US_PER_S, 5))
    """`max_attempts` bounds an action's attempts before the saga gives up and compensates."""
    compensation_backoff: Backoff = field(default_factory=lambda: ExponentialBackoff(100 * US_PER_MS, 10 * US_PER_S))
    """Never gives up: a limit set here is ignored, the wait stays at the cap."""

    def timeout_us(self, step: Step) -> int:
        return step.timeout_us if step.timeout_us is not None else self.step_timeout_us

    @classmethod
    def of(cls, *, step_timeout_s: float, policy: str, base_ms: float, cap_ms: float,
           max_attempts: int | None) -> SagaPolicy:
        base, cap = round(base_ms * US_PER_MS), round(cap_ms * US_PER_MS)
        return cls(round(step_timeout_s * US_PER_S), make_policy(policy, base_us=base, cap_us=cap,
                                                                 max_attempts=max_attempts),
                   make_policy(policy, base_us=base, cap_us=cap))


# ---------------------------------------------------------------------------------------------
# State

StepStateName = Literal["pending", "done", "failed", "compensated"]
Phase = Literal["running", "compensating", "completed", "compensated", "failed"]
Status = Literal["pending", "completed", "compensated", "failed"]
Outcome = Literal["ok", "refused", "error", "timeout"]
TERMINAL: frozenset[str] = frozenset({"completed", "compensated", "failed"})
RETRY_OUTCOMES: frozenset[str] = frozenset({"error", "timeout"})


@dataclass(frozen=True, slots=True)
class StepProgress:
    state: StepStateName = "pending"
    at_us: int | None = None
    """When the state last changed."""


@dataclass(frozen=True, slots=True)
class SagaState:
    saga_id: str
    phase: Phase
    steps: tuple[StepProgress, ...]
    cursor: int
    """The step being done (running) or undone (compensating); every step up to it has begun."""
    attempts: int = 0
    """Failed attempts of the current operation."""
    last_wait_us: int = 0
    retry_at_us: int = 0
    started_us: int = 0
    finished_us: int | None = None
    reason: str | None = None
    """Why the saga aborted: the refusal or the give-up."""

    @property
    def status(self) -> Status:
        return "pending" if self.phase in ("running", "compensating") else self.phase  # type: ignore[return-value]

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """JSON for the saga log; `from_dict` reads it back."""
        return {"saga_id": self.saga_id, "phase": self.phase, "cursor": self.cursor, "attempts": self.attempts,
                "last_wait_us": self.last_wait_us, "retry_at_us": self.retry_at_us, "started_us": self.started_us,
                "finished_us": self.finished_us, "reason": self.reason,
                "steps": [[s.state, s.at_us] for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SagaState:
        return cls(d["saga_id"], d["phase"], tuple(StepProgress(s, at) for s, at in d["steps"]), d["cursor"],
                   d["attempts"], d["last_wait_us"], d["retry_at_us"], d["started_us"], d["finished_us"],
                   d["reason"])


def start(saga_id: str, now_us: int, saga: tuple[Step, ...] = CHECKOUT) -> SagaState:
    return SagaState(saga_id, "running", tuple(StepProgress() for _ in saga), 0, started_us=now_us)


# ---------------------------------------------------------------------------------------------
# Commands

@dataclass(frozen=True, slots=True)
class Do:
    step: Step
    key: str
    attempt: int
    """1 for the first attempt."""


@dataclass(frozen=True, slots=True)
class Undo:
    step: Step
    key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Wait:
    until_us: int


@dataclass(frozen=True, slots=True)
class Finished:
    status: Status


Command = Do | Undo | Wait | Finished


def next_command(state: SagaState, now_us: int, saga: tuple[Step, ...] = CHECKOUT) -> Command:
    if state.terminal:
        return Finished(state.status)
    if state.retry_at_us > now_us:
        return Wait(state.retry_at_us)
    step = saga[state.cursor]
    key = step_key(state.saga_id, step)
    if state.phase == "running":
        return Do(step, key, state.attempts + 1)
    return Undo(step, key, state.attempts + 1)


def apply(state: SagaState, outcome: Outcome, now_us: int, policy: SagaPolicy,
          saga: tuple[Step, ...] = CHECKOUT) -> SagaState:
    """The state after the current command (`next_command`'s Do or Undo) ended with `outcome`."""
    if state.terminal:
        raise ValueError(f"saga {state.saga_id} is already {state.phase}")
    step = saga[state.cursor]
    if state.phase == "running":
        return _after_action(state, step, outcome, now_us, policy, saga)
    return _after_compensation(state, step, outcome, now_us, policy, saga)


def _set(state: SagaState, index: int, step_state: StepStateName, now_us: int) -> tuple[StepProgress, ...]:
    steps = list(state.steps)
    steps[index] = StepProgress(step_state, now_us)
    return tuple(steps)


def _after_action(state: SagaState, step: Step, outcome: Outcome, now_us: int, policy: SagaPolicy,
                  saga: tuple[Step, ...]) -> SagaState:
    i = state.cursor
    if outcome == "ok":
        steps = _set(state, i, "done", now_us)
        if i + 1 == len(saga):
            return replace(state, phase="completed", steps=steps, attempts=0, last_wait_us=0, retry_at_us=0,
                           finished_us=now_us)
        return replace(state, steps=steps, cursor=i + 1, attempts=0, last_wait_us=0, retry_at_us=0)
    if outcome == "refused" and not step.retriable:
        steps = _set(state, i, "failed", now_us)
        return _compensate_from(replace(state, steps=steps), i - 1, now_us, f"{step.name} refused")
    if outcome not in RETRY_OUTCOMES and outcome != "refused":
        raise ValueError(f"unknown outcome {outcome!r}")
    attempts = state.attempts + 1
    backoff = policy.action_backoff
    wait = backoff.next_delay_us(attempts, state.last_wait_us, _rng(state.saga_id, step, attempts))
    if wait is None and not step.retriable:
        # Gave up: the action may still have happened, so this step is compensated too.
        return _compensate_from(state, i, now_us, f"{step.name} gave up after {attempts} attempts ({outcome})")
    if wait is None:
        wait = backoff.cap_us
    return replace(state, attempts=attempts, last_wait_us=wait, retry_at_us=now_us + wait)


def _after_compensation(state: SagaState, step: Step, outcome: Outcome, now_us: int, policy: SagaPolicy,
                        saga: tuple[Step, ...]) -> SagaState:
    i = state.cursor
    if outcome == "ok":
        steps = _set(state, i, "compensated", now_us)
        return _compensate_from(replace(state, steps=steps), i - 1, now_us, state.reason)
    if outcome not in RETRY_OUTCOMES:
        raise ValueError(f"a compensation ends ok, error or timeout, not {outcome!r}")
    attempts = state.attempts + 1
    backoff = policy.compensation_backoff
    wait = backoff.next_delay_us(attempts, state.last_wait_us, _rng(state.saga_id, step, attempts, undo=True))
    if wait is None:  # a compensation never gives up: past any attempt limit the wait stays at the cap
        wait = backoff.cap_us
    return replace(state, attempts=attempts, last_wait_us=wait, retry_at_us=now_us + wait)


def _compensate_from(state: SagaState, index: int, now_us: int, reason: str | None) -> SagaState:
    """Undo the begun steps from `index` down; terminal when none is left."""
    while index >= 0 and state.steps[index].state not in ("done", "pending"):
        index -= 1
    base = replace(state, attempts=0, last_wait_us=0, retry_at_us=0, reason=reason)
    if index >= 0:
        return replace(base, phase="compensating", cursor=index)
    undone = any(s.state == "compensated" for s in state.steps)
    return replace(base, phase="compensated" if undone else "failed", finished_us=now_us)


def _rng(saga_id: str, step: Step, attempt: int, *, undo: bool = False) -> random.Random:
    return random.Random(f"{saga_id}/{step.name}/{'undo' if undo else 'do'}/{attempt}")


# ---------------------------------------------------------------------------------------------
# What a saga looks like from outside, and where faults go

def step_views(state: SagaState, saga: tuple[Step, ...] = CHECKOUT) -> list[dict[str, Any]]:
    """`steps` of `GET /v1/orders/{id}`: name, state and when it got there (µs, None if never)."""
    return [{"name": s.name, "state": p.state, "at_us": p.at_us} for s, p in zip(saga, state.steps, strict=True)]


def fault_point(step: Step | str, when: Literal["before", "after"], *, undo: bool = False) -> str:
    name = step if isinstance(step, str) else step.name
    return f"sagas.{name}.{'undo.' if undo else ''}{when}"


PROVIDER_POINT = "sagas.charge.provider"
"""The payment provider's own failure modes (reference_impl/idempotency/provider.py), taken by the charge."""


def _fault_points() -> dict[str, str]:
    points: dict[str, str] = {}
    for s in CHECKOUT:
        points[fault_point(s, "before")] = f"before {s.participant}.{s.action} (error, delay, crash)"
        points[fault_point(s, "after")] = (f"after {s.participant}.{s.action} took effect (crash; "
                                           "timeout_after_effect: the driver sees a timeout)")
        if s.compensation is not None:
            points[fault_point(s, "before", undo=True)] = (
                f"before {s.participant}.{s.compensation} (error with count N: fails N times, then succeeds)")
            points[fault_point(s, "after", undo=True)] = f"after {s.participant}.{s.compensation} took effect"
    points.update({
        PROVIDER_POINT: ("the lab provider's charge: error = the card is declined (the saga compensates), delay = the "
                         "provider is slow (delay_ms), timeout_after_effect = it charges and the answer is lost"),
        "sagas.orchestrator.logged": "after the saga log records a new saga, before its first step (crash)",
        "sagas.orchestrator.recover": "before recovery resumes an unfinished saga (crash, delay)",
        "sagas.coordinator.prepared": "2PC: after every participant prepared, before the decision is logged",
        "sagas.coordinator.decided": "2PC: after the commit decision is logged, before COMMIT PREPARED",
        "sagas.relay.before": "choreography: before the relay publishes an outbox row",
        "sagas.relay.after": "choreography: after publishing, before marking the row sent (a duplicate)",
        "sagas.stream.duplicate": "choreography: the relay publishes the event twice (any mode)",
        "sagas.stream.reorder": "choreography: the relay publishes the event after the rest of its batch (any mode)",
        "sagas.stream.deliver": ("choreography: a consumer takes a delivered event (error: the delivery fails and "
                                 "is redelivered, dead-lettered after saga_dead_letter_attempts; delay; crash)"),
    })
    return points


FAULT_POINTS: dict[str, str] = _fault_points()
