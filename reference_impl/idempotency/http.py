"""Idempotency over HTTP: every POST under /v1 that carries `Idempotency-Key` (docs/contract.md, "Idempotency").

The per-request recipe is designs.py's; this module carries it out in two pieces, each placed
where the facts it needs are known:

* `IdempotencyKeyMiddleware` (pure ASGI, just inside the tenant-auth middleware) validates the
  header of every POST under /v1 and leaves the key in the scope. A bad key is a 400 problem
  before the router runs: the body is not even parsed, nothing is stored.
* `IdempotentRequests` (route level): a POST route hands it its validated body and its handler;
  it fingerprints the request, claims the key and answers by the claim's outcome.

Why the claim is route level rather than one pure-ASGI middleware: a middleware knows nothing of a
route's body model, so it would claim the key before FastAPI validates the body, and every 422
would then have to be un-claimed again (the contract stores no validation failure); it would also
buffer and re-send the body and capture and re-assemble the response. At route level all of that
is free: a request that reaches the endpoint has passed validation, its raw bytes are cached on
the `Request` for the fingerprint, the payment arrives typed (`PaymentRequest`) for `design.pay`,
and a handler's `Response` is at hand to store. The price is one call per POST route
(`respond(...)` or `pay(...)`), which test_idempotency_api checks on every POST route.

Order within a request: authentication and the rate limit come first, so that an anonymous caller
gets its 401 whatever its key, and every tenant's response, a 400 for a bad key included, carries
the `RateLimit-*` headers and is counted (docs/contract.md, "Rate limiting"); then the key (400), then
the body (422), then the claim. None of those refusals reaches the store.

Where payments live: the ledger's `idempotency_payments` stays the record of effects (one row per
charge, keyed by charge, read by the checker through `ledger.read_state`), and the payments
*resource* stays the tenancy store's `payments` table, wherever the isolation design keeps it
(shared and filtered, shared under row-level security, or one per tenant schema). The tenancy
store's `publisher` (reference_impl/tenancy/repository.py, handed over by the service's wiring)
writes each recorded payment through `Store.put` (same id and creation time) before the request
is finished, on every path that finishes it (the request, a retry, the completer), and `put` is a
no-op for a row already there. So GET /v1/payments reads exactly the ledger's payments through
the same store code, role and policies as every other tenant read, and no isolation design needed
a line changed; the alternative, serving reads from `idempotency_payments`, would have needed a
second RLS policy and a per-tenant view for the schema design to stay as honest. A crash between
the ledger row and `put` leaves the claim unfinished, so recovery publishes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from reference_impl.common.faults import Faults, crash
from reference_impl.common.identity import Tenant
from reference_impl.common.problem import Problem
from reference_impl.idempotency.core import (
    Claim,
    InvalidIdempotencyKey,
    Outcome,
    Policy,
    State,
    StoredResponse,
    fingerprint,
    validate_key,
)
from reference_impl.idempotency.designs import IdempotencyDesign
from reference_impl.idempotency.ledger import CHECKPOINTS, PaymentRequest, new_token
from reference_impl.idempotency.provider import ProviderFault, ProviderTimeout
from saaslab.settings import Settings

log = logging.getLogger("saaslab.idempotency")

KEY_SCOPE_KEY: Final = "saaslab.idempotency_key"
"""Where the middleware leaves the validated key (absent: the request carried none)."""
REPLAYED_HEADER: Final = "Idempotent-Replayed"
KEPT_HEADERS: Final = frozenset({"content-type", "location"})
"""The headers stored with a response: those that belong to the outcome, not to one delivery of it."""

PROVIDER_POINT: Final = "idempotency.provider"
CHECKPOINT_POINTS: Final = {point: f"idempotency.{point}" for point in CHECKPOINTS}
FAULT_POINTS: Final = {
    PROVIDER_POINT: "the lab provider's charge: error = it declines (402, stored), delay = it is slow (delay_ms), "
                    "timeout_after_effect = it charges and the answer is lost (504, nothing stored), "
                    "crash = the worker dies before charging",
    CHECKPOINT_POINTS["charged"]: "after the provider charged, before the payment row is written "
                                  "(crash here: a charge without a payment until a retry or the completer)",
    CHECKPOINT_POINTS["charge_created"]: "after the payment row, before the response is stored "
                                         "(crash here: a payment without a stored response until recovery)",
}
OUTCOMES: Final = (*Outcome, "no_key", "invalid_key")
"""Labels of `decisions`: the claim outcomes, POSTs without a key, keys refused with 400."""


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def policy_of(settings: Settings) -> Policy:
    return Policy.from_seconds(settings.idempotency_retention_s, settings.idempotency_lock_timeout_s)


def render(stored: StoredResponse, *, replayed: bool = False) -> Response:
    """The stored response as sent: its status, headers and body, byte for byte."""
    response = Response(stored.body, status_code=stored.status)
    response.raw_headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in stored.headers]
    if replayed:
        response.raw_headers.append((REPLAYED_HEADER.lower().encode(), b"true"))
    return response


def keep(response: Response) -> StoredResponse:
    """What of a handler's response is stored: status, outcome headers (KEPT_HEADERS) and body."""
    headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers
                    if name.decode("latin-1").lower() in KEPT_HEADERS)
    return StoredResponse(response.status_code, headers, bytes(response.body))


class IdempotencyKeyMiddleware:
    """400 for a POST under /v1 whose Idempotency-Key is not 1 to 255 printable ASCII characters
    (or comes twice); a valid key goes into `scope[KEY_SCOPE_KEY]` for the route."""

    def __init__(self, app: ASGIApp, *, requests: IdempotentRequests | None = None, prefix: str = "/v1") -> None:
        self.app = app
        self.requests = requests
        self.prefix_slash = prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(self.prefix_slash):
            await self.app(scope, receive, send)
            return
        keys = [value for name, value in scope["headers"] if name == b"idempotency-key"]
        if keys:
            try:
                if len(keys) > 1:
                    raise InvalidIdempotencyKey(f"send one Idempotency-Key header, not {len(keys)}")
                scope[KEY_SCOPE_KEY] = validate_key(keys[0])
            except InvalidIdempotencyKey as exc:
                if self.requests is not None:
                    self.requests.decisions["invalid_key"] += 1
                await Problem(400, "invalid-idempotency-key", f"{exc}.").send(send)
                return
        await self.app(scope, receive, send)


class IdempotentRequests:
    """The route-level half: `pay` for POST /v1/payments, `respond` for any other POST route.

    `design` serves keyed requests; `unprotected` (the `none` design, with the same `publish`)
    serves a POST without a key, which is not idempotent (designs.py). `unavailable` are the
    exceptions that mean a backing service failed (answered 503 elsewhere in the app).
    """

    def __init__(self, design: IdempotencyDesign, *, unprotected: IdempotencyDesign, faults: Faults,
                 unavailable: tuple[type[Exception], ...] = (), clock: Callable[[], int] = wall_clock_us) -> None:
        self.design = design
        self._unprotected = unprotected
        self._faults = faults
        self._unavailable = unavailable
        self._clock = clock
        self.decisions: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.provider_timeouts = 0

    async def load(self) -> None:
        """The design's start-up work, best effort: a Redis down at start-up must not stop the
        service (every other route still works; the scripts load on first use)."""
        try:
            await self.design.load()
        except self._unavailable as exc:
            log.warning("idempotency design %s could not load at start-up (%r); loading on first use",
                        self.design.design, exc)

    async def close(self) -> None:
        """Close what the design holds open beyond the app's pools (the redis design's script runner)."""
        close = getattr(self.design, "close", None)
        if close is not None:
            await close()

    async def pay(self, request: Request, tenant: Tenant, payment: PaymentRequest) -> Response:
        """POST /v1/payments: charge the lab provider and record the payment through the design."""
        key: str | None = request.scope.get(KEY_SCOPE_KEY)
        if key is None:
            self.decisions["no_key"] += 1
            design, claim, now_us = self._unprotected, Claim(Outcome.EXECUTE, tenant.id, "", new_token()), self._clock()
        else:
            design = self.design
            claim, now_us = await self._claim(request, tenant, key, payment)
            if not claim.runs:
                return self._answer(claim)
        # Only a claim at `started` calls the provider, so only then is a provider fault taken.
        fault = self._provider_fault() if claim.state == State.STARTED else None
        try:
            stored = await design.pay(claim, payment, now_us, fault=fault, checkpoint=self._checkpoint)
        except ProviderTimeout:
            # The design released the claim: the retry resumes with the same provider token.
            self.provider_timeouts += 1
            return Problem(504, "provider-timeout", "The payment provider did not answer in time, so the outcome "
                           "is unknown. Retry with the same Idempotency-Key: it is charged at most once.",
                           headers={"Retry-After": "1"}).response()
        except Exception:
            # Every step of a payment can be resumed with the claim's provider token: unlock it, so
            # that the retry resumes at once rather than meeting 409s until the lock runs out.
            await self._release_quietly(design, claim)
            raise
        return render(stored)

    async def respond(self, request: Request, tenant: Tenant, handler: Callable[[], Awaitable[Response]]) -> Response:
        """Any other POST route: run `handler` once per key and store what it answered.

        Such routes have no recovery point between `started` and `finished`: an abandoned claim is
        rolled back by the completer, and its retry runs the handler again. Whatever the handler
        answers is stored, problems and an unexpected error's 500 included (Stripe does), except a
        503: by this service's contract nothing was done then, so the claim is released instead
        and the retry runs the handler.
        """
        key: str | None = request.scope.get(KEY_SCOPE_KEY)
        if key is None:
            self.decisions["no_key"] += 1
            return await handler()
        claim, _ = await self._claim(request, tenant, key, None)
        if not claim.runs:
            return self._answer(claim)
        try:
            response = await handler()
        except Exception as exc:
            if isinstance(exc, self._unavailable) or (isinstance(exc, Problem) and exc.status == 503):
                await self._release_quietly(self.design, claim)
                raise
            if isinstance(exc, Problem):
                response = exc.response()
            else:
                log.exception("unhandled error on %s %s (stored as its 500)", request.method, request.url.path)
                response = Problem(500, "internal-error", "The service failed to handle this request.").response()
        return render(await self.design.finish(claim, keep(response)))

    async def _claim(self, request: Request, tenant: Tenant, key: str,
                     payment: PaymentRequest | None) -> tuple[Claim, int]:
        scope = request.scope
        target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        # FastAPI read the body to validate it; Request caches the bytes, so this reads nothing again.
        request_fingerprint = fingerprint(scope["method"], target, await request.body())
        now_us = self._clock()
        claim = await self.design.claim(tenant.id, key, request_fingerprint, now_us, payment=payment)
        self.decisions[claim.outcome] += 1
        return claim, now_us

    @staticmethod
    def _answer(claim: Claim) -> Response:
        """The answer to a claim that does not run: a replay, a conflict or a mismatch."""
        if claim.outcome == Outcome.REPLAY:
            assert claim.response is not None, "a replay carries its stored response"
            return render(claim.response, replayed=True)
        if claim.outcome == Outcome.CONFLICT:
            return Problem(409, "idempotency-key-in-use", "A request with this Idempotency-Key is still being "
                           "processed; retry after Retry-After seconds to get its response.",
                           headers={"Retry-After": str(claim.retry_after_s)}).response()
        return Problem(422, "idempotency-key-mismatch", "This Idempotency-Key was used with a different request "
                       "(method, path or body); send a new key for a new request.").response()

    def _provider_fault(self) -> ProviderFault | None:
        """The lab-mode fault armed at `idempotency.provider`, as the provider's own failure mode."""
        fault = self._faults.take(PROVIDER_POINT)
        if fault is None:
            return None
        if fault.mode == "crash":
            crash(PROVIDER_POINT)
        if fault.mode == "delay":
            return ProviderFault("slow", fault.delay_ms)
        if fault.mode == "error":
            return ProviderFault("fail")
        return ProviderFault("timeout_after_effect")

    async def _checkpoint(self, point: str) -> None:
        """A payment's recovery checkpoint: the lab-mode faults armed at `idempotency.<point>`."""
        name = CHECKPOINT_POINTS[point]
        await self._faults.before(name)
        self._faults.after(name)

    async def _release_quietly(self, design: IdempotencyDesign, claim: Claim) -> None:
        try:
            await design.release(claim, self._clock())
        except Exception as exc:  # the store may be what failed; the lock then runs out on its own
            log.warning("could not release idempotency key %r of tenant %s: %r", claim.key, claim.tenant_id, exc)
