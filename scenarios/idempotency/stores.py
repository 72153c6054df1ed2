"""The simulated store: the design's stored records in memory, driven through the steps of
reference_impl/idempotency/core.py with each operation's round trips from round_trips.py.

It keeps no decision of its own. A claim is `core.claim_step`; `finish`, `release` and phase 2 are
`finish_step`, `release_step` and `record_charge_step`, guarded by the claim's token as the SQL and
Lua are; a running payment is `core.pay_steps`, the machine the service's stores run through
`ledger.carry_payment`; the completer's pass is `core.abandoned`, `take_over_step` and
`recovery` and `roll_back_step` around the same machine. What the store adds is time: each operation costs the
round trips round_trips.py declares for the design, a statement or script taking effect when it is
sent (the row lock's waits are not modelled). The `none` design is the same steps on a store that
keeps nothing (every claim finds no record) and costs nothing.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Protocol

import simpy

from reference_impl.idempotency.core import (
    COMPLETER_BATCH,
    Claim,
    ClaimStep,
    Held,
    Outcome,
    Recovery,
    Signal,
    State,
    Step,
    StoredResponse,
    Write,
    abandoned,
    claim_step,
    finish_step,
    pay_steps,
    record_charge_step,
    recovery,
    release_step,
    roll_back_step,
    take_over_step,
)
from reference_impl.idempotency.payments import Charge, PaymentRequest, declined_response, payment_response
from reference_impl.idempotency.round_trips import LOCKED_CLAIM, REDIS, cost
from scenarios.idempotency.messages import CONFLICT_BODY, GATEWAY_TIMEOUT, Answer, Attempt, answer_of
from scenarios.idempotency.plan import TENANT

if TYPE_CHECKING:
    from scenarios.idempotency.lab import Lab

KEEPS_NOTHING = frozenset({"none"})
"""Designs without a store (designs.NoIdempotency): every claim finds no record."""
RECOVERY_POINTS = frozenset({"postgres"})
"""Designs whose phase 2 records `charge_created` with the payment (postgres.PostgresIdempotency.record_charge);
the others write the payment row on its own (ledger.ChargeThenRecord)."""
COMPLETED = frozenset({"postgres"})
"""Designs with a completer (completer.py)."""


class Crashable(Protocol):
    def checkpoint(self, point: str) -> None: ...


class _NoCrash:
    """The completer's checkpoints: it runs as its own process, where no crash is injected."""

    def checkpoint(self, point: str) -> None:
        """Nothing happens."""


NO_CRASH = _NoCrash()


class SimulatedStore:
    """One design's store in the model (see the module docstring)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.design = lab.design
        self.held: dict[str, Held] = {}
        self.requests: dict[str, PaymentRequest] = {}
        """The payment stored with each claim (the `postgres` design's `request_params`), for the completer."""
        self.charge_ids: dict[str, str] = {}
        """The charge each claim recorded in phase 2, by token (the `postgres` design's `charge_id`)."""

    # --- time

    def trips(self, operation: str, variant: str | None = None) -> Generator[simpy.Event, Any, None]:
        """Spend the operation's round trips (its `variant`'s when the design declares one)."""
        spent = cost(self.design, operation, variant)
        if spent.trips:
            setup = self.lab.setup
            yield self.lab.hop(spent.trips * (setup.redis_rtt_ms if spent.server == REDIS else setup.pg_rtt_ms))

    def _keep(self, key: str, held: Held | None) -> None:
        if held is not None and self.design not in KEEPS_NOTHING:
            self.held[key] = held

    def _apply(self, key: str, step: ClaimStep, request: PaymentRequest) -> None:
        """Write what a claim step says; a new claim is stored with its payment (`request_params`)."""
        self._keep(key, step.held)
        if step.write in (Write.CREATE, Write.REPLACE) and self.design in COMPLETED:
            self.requests[key] = request

    # --- the request

    def serve(self, worker: Crashable, attempt: Attempt, now_us: int) -> Generator[simpy.Event, Any, Answer]:
        """Claim, then carry a running claim through the payment (designs.py's per-request steps)."""
        claim = yield from self.claim(attempt, now_us)
        if claim.outcome == Outcome.REPLAY:
            assert claim.response is not None
            return answer_of(claim.response, replayed=True)
        if claim.outcome == Outcome.CONFLICT:
            return Answer(409, CONFLICT_BODY, retry_after_s=claim.retry_after_s)
        if claim.outcome == Outcome.MISMATCH:
            return Answer(422)
        return (yield from self.pay(worker, claim, attempt.request, now_us, faults=True))

    def claim(self, attempt: Attempt, now_us: int) -> Generator[simpy.Event, Any, Claim]:
        lab, key = self.lab, attempt.key
        step = claim_step(self.held.get(key), TENANT, key, attempt.fingerprint, now_us, lab.policy, lab.new_token())
        locked = self.design in LOCKED_CLAIM and step.write in (Write.TAKE_OVER, Write.REPLACE)
        if not locked:
            self._apply(key, step, attempt.request)
        yield from self.trips("claim", step.write)
        if locked:
            # The claim statement only creates: a write over the row is made again under its lock.
            step = claim_step(self.held.get(key), TENANT, key, attempt.fingerprint, now_us, lab.policy,
                              lab.new_token())
            self._apply(key, step, attempt.request)
            yield from self.trips("lock", step.write)
        return step.claim

    def pay(self, worker: Crashable, claim: Claim, request: PaymentRequest, now_us: int, *,
            faults: bool) -> Generator[simpy.Event, Any, Answer]:
        """Run `core.pay_steps` from the claim's recovery point; `faults`: the provider's faults are drawn."""
        machine = pay_steps(claim.state)
        answer: Any = None
        while True:
            try:
                step, arg = machine.send(answer)
            except StopIteration as done:
                ending = done.value
                break
            answer = yield from self._do(step, arg, worker, claim, request, now_us, faults)
        if ending is Signal.TIMED_OUT:
            return GATEWAY_TIMEOUT
        assert ending is not Signal.LOST, "no reaper runs: a claim never loses its record"
        return answer_of(ending)

    def _do(self, step: Step, arg: Any, worker: Crashable, claim: Claim, request: PaymentRequest, now_us: int,
            faults: bool) -> Generator[simpy.Event, Any, Any]:
        """One step of the payment machine, as ledger.carry_payment does it with the design's store."""
        lab, key, token = self.lab, claim.key, claim.token
        if step == Step.CHARGE:
            return (yield from lab.charge(claim, request, lab.draw_fault() if faults else None))
        if step == Step.CHECKPOINT:
            worker.checkpoint(arg)
            return None
        if step == Step.PUBLISH:  # the tenancy store's write: outside the model (round_trips.py)
            return None
        if step == Step.RECORD:
            charge: Charge = arg
            paid = None
            if self.design not in RECOVERY_POINTS:
                paid = lab.payment_row(key, charge)
            elif (advanced := record_charge_step(self.held.get(key), token)) is not None:
                self._keep(key, advanced)
                self.charge_ids[token] = charge.id
                paid = lab.payment_row(key, charge)
            yield from self.trips("record")
            return paid
        if step == Step.PAYMENT_OF:
            held = self.held.get(key)
            charge_id = self.charge_ids.get(token) if held is not None and held.token == token else None
            yield from self.trips("payment_of")
            return None if charge_id is None else lab.payments.get(charge_id)
        if step == Step.STORED:
            held = self.held.get(key)
            yield from self.trips("stored")
            return held.record.response if held is not None and held.token == token else None
        if step == Step.FINISH:
            response = declined_response() if arg is Signal.DECLINED else payment_response(arg)
            return (yield from self.finish(claim, response))
        self._keep(key, release_step(self.held.get(key), token, now_us))
        yield from self.trips("release")
        return None

    def finish(self, claim: Claim, response: StoredResponse) -> Generator[simpy.Event, Any, StoredResponse]:
        done = finish_step(self.held.get(claim.key), claim.token, response)
        self._keep(claim.key, done.written)
        yield from self.trips("finish", None if done.written is not None else "missed")
        return done.response

    # --- the completer

    def start(self) -> None:
        if self.design in COMPLETED:
            self.lab.env.process(self._completer())

    def _completer(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.lab.hop(self.lab.setup.completer_interval_s * 1000)
            yield from self.run_once()

    def abandoned(self, now_us: int) -> list[str]:
        """The completer's scan: abandoned claims (`core.abandoned`), oldest lock first, one batch."""
        found = [(h.record.locked_until_us, k) for k, h in self.held.items() if abandoned(h.record, now_us)]
        return [k for _, k in sorted(found)[:COMPLETER_BATCH]]

    def run_once(self) -> Generator[simpy.Event, Any, int]:
        """completer.run_once: take over each abandoned claim and resume it, or roll it back."""
        lab = self.lab
        now_us = lab.now_us()
        candidates = self.abandoned(now_us)
        yield from self.trips("scan")
        done = 0
        for key in candidates:
            taken = take_over_step(self.held.get(key), now_us, lab.policy)
            self._keep(key, taken)
            yield from self.trips("take_over", None if taken is not None else "missed")
            if taken is None:  # a retry recovered it first, or it finished meanwhile
                continue
            claim = Claim(Outcome.RECOVER, TENANT, key, taken.token, taken.record.state)
            request = self.requests.get(key)
            if recovery(request is not None) == Recovery.ROLL_BACK:
                if roll_back_step(self.held.get(key), taken.token):
                    del self.held[key]
                    done += 1
                yield from self.trips("roll_back")
                continue
            assert request is not None
            answer = yield from self.pay(NO_CRASH, claim, request, now_us, faults=False)
            if answer.status != GATEWAY_TIMEOUT.status:
                done += 1
        lab.stats.completed_by_completer += done
        return done

    def settle(self) -> Generator[simpy.Event, Any, None]:
        """Let the completer's passes go on until every claim is finished (each lock runs out first)."""
        if self.design not in COMPLETED:
            return
        setup = self.lab.setup
        passes = 0
        while unfinished := sum(1 for h in self.held.values() if h.record.state != State.FINISHED):
            passes += 1
            if passes * setup.completer_interval_s > 10 * setup.lock_timeout_s + 10:
                raise RuntimeError(f"the completer left {unfinished} claims unfinished long after their locks ran out")
            yield self.lab.hop(setup.completer_interval_s * 1000)
