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

Decisions are core.py's steps on the row read back (the twin rule): `claim_step` says what to
answer and write, and a step that writes over an existing row (EXECUTE over an expired row,
RECOVER) is made again under the row lock before it is applied; `pay` runs the payment machine
(`ledger.carry_payment`). Where the SQL itself decides (the compare-and-sets of phase 2, `finish`
and `release`, guarded by the claim's token), tests/integration/test_idempotency_stores.py replays
traces through it and the core's steps and requires the same results. Each operation's round trips
are declared in round_trips.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from reference_impl.common.db import Pool
from reference_impl.idempotency.core import (
    Claim,
    Held,
    Outcome,
    Policy,
    Record,
    State,
    StoredResponse,
    Write,
    claim_step,
    take_over_step,
)
from reference_impl.idempotency.ledger import (
    PAYMENT_COLUMNS,
    Checkpoint,
    ClaimLost,
    Publish,
    carry_payment,
    decode_headers,
    encode_headers,
    new_token,
    payment,
)
from reference_impl.idempotency.payments import PAYMENT_STATUS, Charge, Payment, PaymentRequest
from reference_impl.idempotency.provider import ProviderFault

SCHEMA = Path(__file__).parent / "schema.sql"
CLAIM_ATTEMPTS = 8
"""A key row can vanish (reaped) between our statements; each such race costs one more attempt."""


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


def _held(row: asyncpg.Record) -> Held:
    return Held(_record(row), row["token"])


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
        """Phase 1: `core.claim_step`, and the claim written when it says so. Pass `payment` for a
        payment request: it is stored with the claim so that the completer can resume it."""
        params = None if payment is None else json.dumps(payment.params())
        async with self._pool.connection() as conn:
            for _ in range(CLAIM_ATTEMPTS):
                token = new_token()
                fresh = claim_step(None, tenant_id, key, fingerprint, now_us, self.policy, token)
                assert fresh.held is not None
                row = await conn.fetchrow(_CLAIM, tenant_id, key, token, fingerprint, fresh.held.record.locked_until_us,
                                          fresh.held.record.expires_at_us, params)
                if row["inserted_token"] is not None:
                    return fresh.claim
                if row["state"] is None:  # committed after this statement's snapshot, or reaped since
                    row = await conn.fetchrow(_SELECT, tenant_id, key)
                    if row is None:
                        continue
                step = claim_step(_held(row), tenant_id, key, fingerprint, now_us, self.policy, token)
                if step.write == Write.NOTHING:
                    return step.claim
                claim = await self._claim_locked(conn, tenant_id, key, fingerprint, now_us, params, token)
                if claim is not None:
                    return claim
        raise ClaimLost(f"key {key!r} kept vanishing while being claimed ({CLAIM_ATTEMPTS} attempts)")

    async def take_over(self, tenant_id: str, key: str, now_us: int) -> tuple[Claim, PaymentRequest | None] | None:
        """The completer's claim (`core.take_over_step`): RECOVER the key if it is abandoned, with the
        payment stored with it (None for a request that is not a payment); else None."""
        async with self._pool.connection() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT + " FOR UPDATE", tenant_id, key)
            taken = take_over_step(None if row is None else _held(row), now_us, self.policy)
            if taken is None:
                return None
            await conn.execute(_TAKE_OVER, tenant_id, key, taken.record.locked_until_us, taken.record.expires_at_us)
        params = row["request_params"]
        request = None if params is None else PaymentRequest(**json.loads(params))
        return Claim(Outcome.RECOVER, tenant_id, key, taken.token, taken.record.state), request

    async def _claim_locked(self, conn: asyncpg.Connection, tenant_id: str, key: str, fingerprint: str,
                            now_us: int, params: str | None, token: str) -> Claim | None:
        """The claim step again under the row lock, and its write; None when the row vanished meanwhile."""
        async with conn.transaction():
            row = await conn.fetchrow(_SELECT + " FOR UPDATE", tenant_id, key)
            if row is None:
                return None
            step = claim_step(_held(row), tenant_id, key, fingerprint, now_us, self.policy, token)
            claimed = step.held
            if step.write == Write.TAKE_OVER:
                assert claimed is not None
                await conn.execute(_TAKE_OVER, tenant_id, key, claimed.record.locked_until_us,
                                   claimed.record.expires_at_us)
            elif step.write == Write.REPLACE:  # the row is past retention: a new request replaces it
                assert claimed is not None
                await conn.execute("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2", tenant_id, key)
                await conn.fetchval(_INSERT, tenant_id, key, token, fingerprint, claimed.record.locked_until_us,
                                    claimed.record.expires_at_us, params)
            return step.claim

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
        """Carry a claimed payment from its recovery point to `finished` (`core.pay_steps`); returns
        the stored response.

        Raises ProviderTimeout (after releasing the claim) when the provider's answer is lost: the
        outcome is unknown, so answer 504 and store nothing; the retry resumes with the same token.
        """
        if not claim.runs:
            raise ValueError(f"a {claim.outcome} claim does not run")
        return await carry_payment(self, self._pool, claim, request, now_us, fault, checkpoint, self._publish)

    async def record_charge(self, claim: Claim, charge: Charge) -> Payment | None:
        """Phase 2 in one statement: `started -> charge_created` (`core.record_charge_step`) and the
        payment row, or None when the compare-and-set missed."""
        async with self._pool.connection() as conn:
            row = await conn.fetchrow(_RECORD_CHARGE, claim.token, charge.id, charge.amount, charge.currency,
                                      PAYMENT_STATUS)
        return None if row is None else payment(row)

    async def payment_of(self, claim: Claim) -> Payment | None:
        async with self._pool.connection() as conn:
            row = await conn.fetchrow(_PAYMENT_OF, claim.token)
        return None if row is None else payment(row)

    async def stored(self, claim: Claim) -> StoredResponse | None:
        async with self._pool.connection() as conn:
            row = await conn.fetchrow(_STORED, claim.token)
        return None if row is None else _response(*row)

    async def record(self, tenant_id: str, key: str) -> Record | None:
        """The stored record, as the core sees it (None when absent)."""
        async with self._pool.connection() as conn:
            row = await conn.fetchrow(_SELECT, tenant_id, key)
        return None if row is None else _record(row)
