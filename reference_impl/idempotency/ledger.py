"""The side effect every design protects: charge the provider, then write the payment row.

`idempotency_payments` (schema.sql) is the ledger; the checker reads it with the provider's charges
(`read_state`). `record_payment` is idempotent per charge (a retried write finds the first row),
and `payments.payment_response` renders a payment the same way whoever finishes the request (the
request itself, a retry that recovered it, the completer), so every copy of a response is the same
bytes. The rows' and requests' types are payments.py's, which the simulation shares without I/O.

`carry_payment` runs the payment machine (`core.pay_steps`) against the real provider, this ledger
and a design's store: the steps every design shares are here, the store-specific ones (`record_charge`,
`payment_of`, `stored`, `finish`, `release`) are the store's. `ChargeThenRecord` gives them for
the `redis` and `none` designs: charge, then write the payment row, two independent steps, each
idempotent on its own key, with nothing durable in between (the `postgres` design's phases live in
postgres.py). Beside them, what the stores share: claim tokens and the stored headers' format.

Every design may be given a `Publish` hook: called with the payment once its ledger row exists and
before the request is finished, on every path that finishes it (the request itself, a retry that
recovered it, the completer). The service publishes the payment to the tenant's payments resource
with it (idempotency/http.py); it must be idempotent, since a recovered request publishes again.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncpg

from reference_impl.common.db import Pool
from reference_impl.idempotency import provider
from reference_impl.idempotency.core import CHARGED as CHARGED  # the checkpoints, importable from here too
from reference_impl.idempotency.core import CHECKPOINTS as CHECKPOINTS
from reference_impl.idempotency.core import RECORDED as RECORDED
from reference_impl.idempotency.core import Claim, Signal, Step, StoredResponse, pay_steps
from reference_impl.idempotency.payments import (
    PAYMENT_STATUS,
    LedgerState,
    Payment,
    PaymentRequest,
    declined_response,
    payment_response,
)
from reference_impl.idempotency.provider import Charge, ProviderError, ProviderFault, ProviderTimeout

Checkpoint = Callable[[str], Awaitable[None]]
"""Called at named points of a payment's flow (`core.CHECKPOINTS`), e.g. to arm lab-mode crash faults."""


Publish = Callable[[Payment], Awaitable[None]]
"""Called with a recorded payment before its request is finished (see the module docstring)."""

PAYMENT_COLUMNS = "id, tenant_id, idempotency_key, charge_id, amount, currency, status, created_at"
# DO UPDATE rather than DO NOTHING: RETURNING then yields the first row too, in one round trip.
_RECORD = (f"INSERT INTO idempotency_payments (tenant_id, idempotency_key, charge_id, amount, currency, status)"
           f" VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (charge_id) DO UPDATE SET charge_id = EXCLUDED.charge_id"
           f" RETURNING {PAYMENT_COLUMNS}")


def payment(row: asyncpg.Record) -> Payment:
    return Payment(*row)


async def record_payment(pool: Pool, tenant_id: str, key: str | None, charge: Charge) -> Payment:
    async with pool.connection() as conn:
        return payment(await conn.fetchrow(_RECORD, tenant_id, key, charge.id, charge.amount, charge.currency,
                                           PAYMENT_STATUS))


def new_token() -> str:
    """A claim's handle, unique per execution: also the token the provider dedupes on."""
    return "idk_" + secrets.token_hex(16)


def encode_headers(headers: Sequence[tuple[str, str]]) -> str:
    """A stored response's headers as JSON: a list of pairs, order and repeats kept."""
    return json.dumps([list(h) for h in headers])


def decode_headers(raw: str | bytes) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in json.loads(raw))


class ClaimLost(Exception):
    """The claim's record no longer exists (reaped past retention while its holder still ran)."""


class PaymentStore(Protocol):
    """A design's side of the payment machine's steps (see the module docstring)."""

    async def finish(self, claim: Claim, response: StoredResponse) -> StoredResponse: ...

    async def release(self, claim: Claim, now_us: int) -> None: ...

    async def record_charge(self, claim: Claim, charge: Charge) -> Payment | None: ...

    async def payment_of(self, claim: Claim) -> Payment | None: ...

    async def stored(self, claim: Claim) -> StoredResponse | None: ...


class ChargeThenRecord:
    """The steps of the designs without recovery points: the payment row is written on its own
    (`record_payment`), and a claim never resumes past `started`, so nothing is read back."""

    _pool: Pool

    async def record_charge(self, claim: Claim, charge: Charge) -> Payment | None:
        return await record_payment(self._pool, claim.tenant_id, claim.key or None, charge)

    async def payment_of(self, claim: Claim) -> Payment | None:
        return None

    async def stored(self, claim: Claim) -> StoredResponse | None:
        return None


async def carry_payment(store: PaymentStore, pool: Pool, claim: Claim, request: PaymentRequest, now_us: int,
                        fault: ProviderFault | None, checkpoint: Checkpoint | None,
                        publish: Publish | None = None) -> StoredResponse:
    """Run `core.pay_steps` from the claim's recovery point; returns the stored response.

    A provider timeout releases the claim (the next retry recovers it at once and re-asks with the
    same token) and raises ProviderTimeout: the outcome is unknown, so nothing may be stored for it.
    ClaimLost when the claim has neither a payment nor a response.
    """
    machine = pay_steps(claim.state)
    answer: Any = None
    timeout: ProviderTimeout | None = None
    while True:
        try:
            step, arg = machine.send(answer)
        except StopIteration as done:
            ending = done.value
            break
        if step == Step.CHARGE:
            try:
                answer = await provider.charge(pool, claim.tenant_id, request.amount, request.currency, claim.token,
                                               fault, reference=claim.key or None)  # "": the request carried no key
            except ProviderTimeout as exc:
                timeout, answer = exc, Signal.TIMED_OUT
            except ProviderError:
                answer = Signal.DECLINED
        elif step == Step.CHECKPOINT:
            answer = await reach(checkpoint, arg)
        elif step == Step.RECORD:
            answer = await store.record_charge(claim, arg)
        elif step == Step.PAYMENT_OF:
            answer = await store.payment_of(claim)
        elif step == Step.STORED:
            answer = await store.stored(claim)
        elif step == Step.PUBLISH:
            answer = None if publish is None else await publish(arg)
        elif step == Step.FINISH:
            response = declined_response() if arg is Signal.DECLINED else payment_response(arg)
            answer = await store.finish(claim, response)
        else:
            answer = await store.release(claim, now_us)
    if ending is Signal.TIMED_OUT:
        assert timeout is not None
        raise timeout
    if ending is Signal.LOST:
        raise ClaimLost(f"the claim of key {claim.key!r} has no payment and no response")
    return ending


async def reach(checkpoint: Checkpoint | None, point: str) -> None:
    if checkpoint is not None:
        await checkpoint(point)


async def read_state(pool: Pool, tenant_id: str | None = None) -> LedgerState:
    """The provider's charges and the payment ledger (of one tenant, if given)."""
    async with pool.connection() as conn:
        rows = await conn.fetch(f"SELECT {PAYMENT_COLUMNS} FROM idempotency_payments"
                                " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at, id", tenant_id)
    return LedgerState(tuple(await provider.charges(pool, tenant_id)), tuple(payment(r) for r in rows))
