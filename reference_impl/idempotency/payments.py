"""A payment's data, with no I/O: what a request asks for, what the provider charges, what the ledger
records, and the responses rendered from them.

The service's adapters (ledger.py, provider.py, postgres.py) read and write these; the simulation
(scenarios/idempotency/) builds them in memory, so both faces store and replay the same bytes.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any, Literal

from reference_impl.idempotency.core import StoredResponse

PAYMENT_STATUS = "succeeded"
JSON_HEADERS = (("content-type", "application/json"),)
_CURRENCY = re.compile(r"^[A-Z]{3}$")

FaultMode = Literal["fail", "slow", "timeout_after_effect"]
"""The provider's failure modes (provider.py describes each)."""
SUCCEEDED = "succeeded"
FAILED = "failed"

PROBLEM_BASE = "https://saaslab.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
"""As reference_impl/common/problem.py renders problems (tests/unit/test_idempotency_payments.py holds
them equal): the declined response is stored data here, rendered without the web framework."""


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
class Charge:
    """A charge the provider made (or refused: status FAILED), one per (account, token)."""

    id: str
    tenant_id: str
    token: str
    reference: str | None
    amount: int
    currency: str
    status: str


@dataclass(frozen=True, slots=True)
class Payment:
    """A row of the payment ledger (`idempotency_payments`, schema.sql)."""

    id: uuid.UUID
    tenant_id: str
    idempotency_key: str | None
    charge_id: str
    amount: int
    currency: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What the checker needs of the final state: every charge the provider made and every payment row."""

    charges: tuple[Charge, ...]
    payments: tuple[Payment, ...]


def payment_response(p: Payment) -> StoredResponse:
    """201 with the payment, shaped as the tenancy routes shape theirs."""
    body = {"id": str(p.id), "amount": p.amount, "currency": p.currency, "status": p.status,
            "created_at": p.created_at.isoformat()}
    return StoredResponse(201, JSON_HEADERS, json.dumps(body, separators=(",", ":")).encode())


def declined_response() -> StoredResponse:
    """402 for a charge the provider refused. Stored like any other outcome once execution began;
    the detail is fixed, so two workers finishing the same refusal render the same bytes."""
    problem = {"type": PROBLEM_BASE + "payment-declined", "title": HTTPStatus(402).phrase, "status": 402,
               "detail": "The payment provider declined the charge."}
    return StoredResponse(402, (("content-type", PROBLEM_CONTENT_TYPE),),
                          json.dumps(problem, separators=(",", ":")).encode())
