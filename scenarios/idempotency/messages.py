"""What travels between the simulated clients, workers, store and provider."""

from __future__ import annotations

from dataclasses import dataclass

from reference_impl.idempotency.core import StoredResponse
from reference_impl.idempotency.payments import PaymentRequest


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as the client sees it."""

    status: int
    body: bytes = b""
    replayed: bool = False
    retry_after_s: int | None = None

    @property
    def decisive(self) -> bool:
        """201 or 402, fresh or replayed: the payment's outcome is known."""
        return self.status in (201, 402)


RESET = "reset"
"""The worker died with the attempt on it: the connection dropped (unknown outcome)."""
REFUSED = "refused"
"""No worker was alive to accept the connection (certainly no effect)."""
TIMEOUT = "timeout"
GATEWAY_TIMEOUT = Answer(504, retry_after_s=1)
CONFLICT_BODY = b'{"type":"idempotency-conflict"}'


def answer_of(response: StoredResponse, replayed: bool = False) -> Answer:
    return Answer(response.status, response.body, replayed)


@dataclass(frozen=True, slots=True)
class Attempt:
    key: str
    fingerprint: str
    request: PaymentRequest
