"""The side effect every design protects: charge the provider, then write the payment row.

`idempotency_payments` (schema.sql) is the ledger; the checker reads it with the provider's charges
(`read_state`). `record_payment` is idempotent per charge (a retried write finds the first row),
and `payment_response` renders a payment the same way whoever finishes the request (the request
itself, a retry that recovered it, the completer), so every copy of a response is the same bytes.

`charge_then_record` is the effect of the `redis` and `none` designs: two independent steps, each
idempotent on its own key, with nothing durable in between (the `postgres` design's phases live
in postgres.py). Beside them, what the stores share: claim tokens and the stored headers' format.

Every design may be given a `Publish` hook: called with the payment once its ledger row exists and
before the request is finished, on every path that finishes it (the request itself, a retry that
recovered it, the completer). The service publishes the payment to the tenant's payments resource
with it (idempotency/http.py); it must be idempotent, since a recovered request publishes again.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from reference_impl.common.db import Pool
from reference_impl.common.problem import PROBLEM_CONTENT_TYPE, Problem
from reference_impl.idempotency import provider
from reference_impl.idempotency.core import Claim, StoredResponse
from reference_impl.idempotency.provider import Charge, ProviderError, ProviderFault, ProviderTimeout

PAYMENT_STATUS = "succeeded"
JSON_HEADERS = (("content-type", "application/json"),)
_CURRENCY = re.compile(r"^[A-Z]{3}$")

Checkpoint = Callable[[str], Awaitable[None]]
"""Called at named points of a payment's flow (`CHECKPOINTS`), e.g. to arm lab-mode crash faults."""
CHARGED = "charged"
"""The provider has answered with a charge; nothing of ours is recorded yet."""
RECORDED = "charge_created"
"""The payment row exists (for `postgres`, in the same transaction as the `charge_created` point)."""
CHECKPOINTS = (CHARGED, RECORDED)


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A validated `POST /v1/payments` body."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if not 0 < self.amount < 2**63:
            raise ValueError(f"amount must be a positive 64-bit integer, got {self.amount}")
        if not _CURRENCY.match(self.currency):
            raise ValueError(f"currency must be an ISO 4217 code, got {self.currency!r}")

    def params(self) -> dict[str, Any]:
        return {"amount": self.amount, "currency": self.currency}


@dataclass(frozen=True, slots=True)
class Payment:
    id: uuid.UUID
    tenant_id: str
    idempotency_key: str | None
    charge_id: str
    amount: int
    currency: str
    status: str
    created_at: datetime


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


def payment_response(p: Payment) -> StoredResponse:
    """201 with the payment, shaped as the tenancy routes shape theirs."""
    body = {"id": str(p.id), "amount": p.amount, "currency": p.currency, "status": p.status,
            "created_at": p.created_at.isoformat()}
    return StoredResponse(201, JSON_HEADERS, json.dumps(body, separators=(",", ":")).encode())


def declined_response() -> StoredResponse:
    """402 for a charge the provider refused. Stored like any other outcome once execution began;
    the detail is fixed, so two workers finishing the same refusal render the same bytes."""
    problem = Problem(402, "payment-declined", "The payment provider declined the charge.")
    return StoredResponse(402, (("content-type", PROBLEM_CONTENT_TYPE),), problem.encode())


class Finisher(Protocol):
    async def finish(self, claim: Claim, response: StoredResponse) -> StoredResponse: ...

    async def release(self, claim: Claim, now_us: int) -> None: ...


async def charge_then_record(store: Finisher, pool: Pool, claim: Claim, request: PaymentRequest, now_us: int,
                             fault: ProviderFault | None, checkpoint: Checkpoint | None,
                             publish: Publish | None = None) -> StoredResponse:
    """Charge with the claim's token, write the payment, finish the claim.

    A provider timeout releases the claim (the next retry recovers it at once and re-asks with the
    same token) and propagates: the outcome is unknown, so nothing may be stored for it.
    """
    key = claim.key or None  # "": the request carried no key
    try:
        charge = await provider.charge(pool, claim.tenant_id, request.amount, request.currency, claim.token,
                                       fault, reference=key)
    except ProviderTimeout:
        await store.release(claim, now_us)
        raise
    except ProviderError:
        return await store.finish(claim, declined_response())
    await reach(checkpoint, CHARGED)
    paid = await record_payment(pool, claim.tenant_id, key, charge)
    await reach(checkpoint, RECORDED)
    if publish is not None:
        await publish(paid)
    return await store.finish(claim, payment_response(paid))


async def reach(checkpoint: Checkpoint | None, point: str) -> None:
    if checkpoint is not None:
        await checkpoint(point)


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What the checker needs of the final state: every charge the provider made and every payment row."""

    charges: tuple[Charge, ...]
    payments: tuple[Payment, ...]


async def read_state(pool: Pool, tenant_id: str | None = None) -> LedgerState:
    """The provider's charges and the payment ledger (of one tenant, if given)."""
    async with pool.connection() as conn:
        rows = await conn.fetch(f"SELECT {PAYMENT_COLUMNS} FROM idempotency_payments"
                                " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at, id", tenant_id)
    return LedgerState(tuple(await provider.charges(pool, tenant_id)), tuple(payment(r) for r in rows))
