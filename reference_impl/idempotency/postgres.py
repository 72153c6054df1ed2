"""The `postgres` design: idempotency keys as rows, a payment as atomic phases (brandur's rocket-rides-atomic).

Each phase is one transaction and ends at a recovery point stored in the key's row:

1. `claim` (phase 1) records `started` with the lock and, for a payment, the request's parameters
   (the completer resumes from them). The common cases, a first request and a replay, are one
   autocommit statement (`_CLAIM`): an `INSERT ... ON CONFLICT DO NOTHING` that also reads the
   row it ran into, so a replay is answered in the same round trip. The unique key arbitrates
   concurrent first requests; a loser waits for the winner's commit, which its statement's
   snapshot predates, so it reads the row with a second statement.
2. `pay` asks the provider with the claim's token (outside any transaction of ours: never hold a
   transaction open across a network call), then, in one statement, moves the row from `started`
   to `charge_created` and inserts the payment row.
3. `finish` stores the response and `finished`.

A crash between any two of them leaves a state that can be finished without a second charge:
after 1 the token was never used or the provider charged once for it, and asking again with the
same token returns that same charge; after 2 the payment exists and only the response is missing.
The completer (completer.py), or a retry once the lock has run out (RECOVER), resumes from the
recovery point; a provider timeout releases the lock so that the retry resumes at once.

Why row locks and READ COMMITTED rather than SERIALIZABLE (which brandur uses): every write of
every phase is to one key row, guarded by a compare-and-set on its state (`WHERE token = $1 AND
state = 'started'`) or serialised by `SELECT ... FOR UPDATE`, and the payment row is unique per
charge. The anomalies SERIALIZABLE prevents (write skew across rows read but not written) cannot
arise, while its serialisation failures would make 50 concurrent requests for one key retry
their transactions; row locks just queue them, one decision each.

Safety never rests on the lock. A holder that is slow rather than dead can still be running when
a retry recovers its claim; both then ask the provider with the same token (one charge), only one
of them wins the `started -> charge_created` compare-and-set (one payment), and the first stored
response is the one every later client gets. The lock only turns concurrent duplicates into 409s
instead of redundant work.

Decisions are `core.decide` on the row read back (the twin rule); a decision that writes
(EXECUTE over an expired row, RECOVER) is re-made under the row lock before it is applied.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from reference_impl.common.db import Pool
from reference_impl.idempotency import provider
from reference_impl.idempotency.core import (
    RUNS,
    Claim,
    Decision,
    Outcome,
    Policy,
    Record,
    State,
    StoredResponse,
    decide,
)
from reference_impl.idempotency.ledger import (
    CHARGED,
    PAYMENT_COLUMNS,
    PAYMENT_STATUS,
    RECORDED,
    Checkpoint,
    Payment,
    PaymentRequest,
    Publish,
    declined_response,
    decode_headers,
    encode_headers,
    new_token,
    payment,
    payment_response,
    reach,
)
from reference_impl.idempotency.provider import ProviderError, ProviderFault, ProviderTimeout

SCHEMA = Path(__file__).parent / "schema.sql"
CLAIM_ATTEMPTS = 8
"""A key row can vanish (reaped) between our statements; each such race costs one more attempt."""


class ClaimLost(Exception):
    """The claim's row no longer exists (reaped past retention while its holder still ran)."""


_RECORD_COLUMNS = ("fingerprint, state, locked_until_us, expires_at_us, response_status, response_headers,"
                   " response_body")
_SELECT = f"SELECT token, request_params, {_RECORD_COLUMNS} FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"
_INSERT = ("INSERT INTO idempotency_keys (tenant_id, key, token, fingerprint, state, locked_until_us, expires_at_us,"
           " request_params) VALUES ($1, $2, $3, $4, 'started', $5, $6, $7::jsonb)"
           " ON CONFLICT (tenant_id, key) DO NOTHING RETURNING token")
# The insert and, when it ran into a row, that row, in one round trip. The main query sees the snapshot
# taken when the statement began, so it never sees the row the CTE just inserted (the columns are then
# NULL and `inserted_token` is set), nor a row committed by a concurrent first request after that
# snapshot (all NULL: `claim` reads again with a new statement).
_CLAIM = (f"WITH inserted AS ({_INSERT}) SELECT (SELECT token FROM inserted) AS inserted_token, token,"
          f" request_params, {_RECORD_COLUMNS} FROM (VALUES (1)) AS one"
          " LEFT JOIN idempotency_keys ON tenant_id = $1 AND key = $2")
_TAKE_OVER = ("UPDATE idempotency_keys SET locked_until_us = $3, expires_at_us = $4"
              " WHERE tenant_id = $1 AND key = $2")
# Phase 2, one statement and so one transaction: the compare-and-set on `started` takes the row
# lock, and the payment is inserted only if it succeeded.
_RECORD_CHARGE = f"""
WITH advanced AS (
    UPDATE idempotency_keys SET state = 'charge_created', charge_id = $2
    WHERE token = $1 AND state = 'started'
    RETURNING tenant_id, key
)
INSERT INTO idempotency_payments (tenant_id, idempotency_key, charge_id, amount, currency, status)
SELECT tenant_id, key, $2, $3, $4, $5 FROM advanced
RETURNING {PAYMENT_COLUMNS}"""
_PAYMENT_OF = (f"SELECT {PAYMENT_COLUMNS} FROM idempotency_payments"
               " WHERE charge_id = (SELECT charge_id FROM idempotency_keys WHERE token = $1)")
_FINISH = ("UPDATE idempotency_keys SET state = 'finished', locked_until_us = 0, response_status = $2,"
           " response_headers = $3::jsonb, response_body = $4 WHERE token = $1 AND state <> 'finished'")
_STORED = "SELECT response_status, response_headers, response_body FROM idempotency_keys WHERE token = $1"
_RELEASE = ("UPDATE idempotency_keys SET locked_until_us = LEAST(locked_until_us, $2)"
            " WHERE token = $1 AND state <> 'finished'")


def _response(status: int | None, headers: str | None, body: bytes | None) -> StoredResponse | None:
    if status is None:
        return None
    return StoredResponse(status, decode_headers(headers or "[]"), body or b"")


def _stored(row: asyncpg.Record) -> StoredResponse:
    response = _response(*row)
    assert response is not None, "a finished row always holds its response (schema.sql CHECK)"
    return response


def _record(row: asyncpg.Record) -> Record:
    return Record(row["fingerprint"], State(row["state"]), row["locked_until_us"], row["expires_at_us"],
                  _response(row["response_status"], row["response_headers"], row["response_body"]))


def _answer(tenant_id: str, key: str, decision: Decision) -> Claim:
    """The claim for a decision that leaves the row as it is. Only a replay carries the response:
    a mismatched request must never see another request's answer."""
    response = decision.record.response if decision.outcome == Outcome.REPLAY else None
    return Claim(decision.outcome, tenant_id, key, response=response, retry_after_s=decision.retry_after_s)


class PostgresIdempotency:
    design = "postgres"

    def __init__(self, pool: Pool, policy: Policy | None = None, *, publish: Publish | None = None) -> None:
        self._pool = pool
        self.policy = policy or Policy()
        self._publish = publish

    async def load(self) -> None:
        """Nothing to load: the schema is applied with the service's migrations (`SCHEMA`)."""

    async def claim(self, tenant_id: str, key: str, fingerprint: str, now_us: int, *,
                    payment: PaymentRequest | None = None) -> Claim:
        """Phase 1: decide, and claim the key when the decision says so. Pass `payment` for a
        payment request: it is stored with the claim so that the completer can resume it."""
        params = None if payment is None else json.dumps(payment.params())
        async with self._pool.connection() as conn:
            for _ in range(CLAIM_ATTEMPTS):
                fresh = decide(None, fingerprint, now_us, self.policy).record
                token = new_token()
                row = await conn.fetchrow(_CLAIM, tenant_id, key, token, fingerprint, fresh.locked_until_us,
                                          fresh.expires_at_us, params)
                if row["inserted_token"] is not None:
                    return Claim(Outcome.EXECUTE, tenant_id, key, token)
                if row["state"] is None:  # committed after this statement's snapshot, or reaped since
                    row = await conn.fetchrow(_SELECT, tenant_id, key)
                    if row is None:
                        continue
                decision = decide(_record(row), fingerprint, now_us, self.policy)
                if decision.outcome not in RUNS:
                    return _answer(tenant_id, key, decision)
                claim = await self._decide_locked(conn, tenant_id, key, fingerprint, now_us, params)
                if claim is not None:
                    return claim
        raise ClaimLost(f"key {key!r} kept vanishing while being claimed ({CLAIM_ATTEMPTS} attempts)")

    async def take_over(self, tenant_id: str, key: str, now_us: int) -> tuple[Claim, PaymentRequest | None] | None:
        """The completer's claim: RECOVER the key if it is abandoned, with the payment stored with
        it (None for a request that is not a payment); else None. Unlike `claim`, it never creates
        a record."""
        async with self._pool.connection() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT + " FOR UPDATE", tenant_id, key)
            if row is None:
                return None
            decision = decide(_record(row), row["fingerprint"], now_us, self.policy)
            if decision.outcome != Outcome.RECOVER:
                return None
            await conn.execute(_TAKE_OVER, tenant_id, key, decision.record.locked_until_us,
                               decision.record.expires_at_us)
        params = row["request_params"]
        request = None if params is None else PaymentRequest(**json.loads(params))
        return Claim(Outcome.RECOVER, tenant_id, key, row["token"], State(row["state"])), request

    async def _decide_locked(self, conn: asyncpg.Connection, tenant_id: str, key: str, fingerprint: str,
                             now_us: int, params: str | None) -> Claim | None:
        """Decide again under the row lock and apply it; None when the row vanished meanwhile."""
        async with conn.transaction():
            row = await conn.fetchrow(_SELECT + " FOR UPDATE", tenant_id, key)
            if row is None:
                return None
            decision = decide(_record(row), fingerprint, now_us, self.policy)
            claimed = decision.record
            if decision.outcome == Outcome.RECOVER:
                await conn.execute(_TAKE_OVER, tenant_id, key, claimed.locked_until_us, claimed.expires_at_us)
                return Claim(Outcome.RECOVER, tenant_id, key, row["token"], claimed.state)
            if decision.outcome == Outcome.EXECUTE:  # the row is past retention: a new request replaces it
                token = new_token()
                await conn.execute("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2", tenant_id, key)
                await conn.fetchval(_INSERT, tenant_id, key, token, fingerprint, claimed.locked_until_us,
                                    claimed.expires_at_us, params)
                return Claim(Outcome.EXECUTE, tenant_id, key, token)
            return _answer(tenant_id, key, decision)

    async def finish(self, claim: Claim, response: StoredResponse) -> StoredResponse:
        """Phase 3: store the response. Returns what is stored: `response`, or the response another
        holder of the same claim stored first (every client of one key gets the same bytes).
        A claim lost to the reaper stores nothing and returns `response`."""
        async with self._pool.connection() as conn:
            if await conn.execute(_FINISH, claim.token, response.status, encode_headers(response.headers),
                                  response.body) == "UPDATE 1":
                return response
            stored = await conn.fetchrow(_STORED, claim.token)
        # The update missed: the row is finished (return what is stored) or gone (nothing to store).
        return response if stored is None else _stored(stored)

    async def release(self, claim: Claim, now_us: int) -> None:
        """Unlock an unfinished claim now, so the next retry recovers it at once (unknown outcome)."""
        async with self._pool.connection() as conn:
            await conn.execute(_RELEASE, claim.token, now_us)

    async def pay(self, claim: Claim, request: PaymentRequest, now_us: int, *, fault: ProviderFault | None = None,
                  checkpoint: Checkpoint | None = None) -> StoredResponse:
        """Carry a claimed payment from its recovery point to `finished`; returns the stored response.

        Raises ProviderTimeout (after releasing the claim) when the provider's answer is lost: the
        outcome is unknown, so answer 504 and store nothing; the retry resumes with the same token.
        """
        if not claim.runs:
            raise ValueError(f"a {claim.outcome} claim does not run")
        if claim.state == State.STARTED:
            try:
                charge = await provider.charge(self._pool, claim.tenant_id, request.amount, request.currency,
                                               claim.token, fault, reference=claim.key)
            except ProviderTimeout:
                await self.release(claim, now_us)
                raise
            except ProviderError:
                return await self.finish(claim, declined_response())
            await reach(checkpoint, CHARGED)
            async with self._pool.connection() as conn:
                row = await conn.fetchrow(_RECORD_CHARGE, claim.token, charge.id, charge.amount, charge.currency,
                                          PAYMENT_STATUS)
            await reach(checkpoint, RECORDED)
            if row is not None:
                return await self._publish_and_finish(claim, payment(row))
        # Resuming from charge_created, or another holder of this claim recorded the charge first.
        async with self._pool.connection() as conn:
            row = await conn.fetchrow(_PAYMENT_OF, claim.token)
            stored = await conn.fetchrow(_STORED, claim.token) if row is None else None
        if row is not None:
            return await self._publish_and_finish(claim, payment(row))
        if stored is not None and stored["response_status"] is not None:
            return _stored(stored)
        raise ClaimLost(f"the claim of key {claim.key!r} has no payment and no response")

    async def _publish_and_finish(self, claim: Claim, paid: Payment) -> StoredResponse:
        if self._publish is not None:
            await self._publish(paid)
        return await self.finish(claim, payment_response(paid))

    async def record(self, tenant_id: str, key: str) -> Record | None:
        """The stored record, as the core sees it (None when absent)."""
        async with self._pool.connection() as conn:
            row = await conn.fetchrow(_SELECT, tenant_id, key)
        return None if row is None else _record(row)
