"""The `redis` design: an atomic claim of the key plus the stored response, in one Redis HASH.

`claim.lua` is the twin of `core.claim_step`: it reads the record and, when the decision says so,
claims the key (fingerprint, `started`, the lock, a fresh token) in the same atomic step, so
claim-or-read is one round trip. `finish.lua` (the twin of `core.finish_step`) stores the response
in the same HASH (kept for the retention period), `release.lua` (`core.release_step`) unlocks a
claim whose outcome is unknown. tests/integration/test_idempotency_stores.py replays traces through
the scripts and the core's steps and requires the same decisions and records. Keys carry the tenant
as a hash tag, so a Redis Cluster keeps a tenant's keys in one slot:
`{prefix}:{{tenant}}:idem:{sha256(key)}` (hashed: a client's key may hold anything printable).

The payment is the payment machine (`core.pay_steps`, run by `ledger.carry_payment`) with
`ledger.ChargeThenRecord`'s steps: charge with the claim's token, write the payment row, store the
response. Nothing durable marks the steps in between, so after a crash only the
client's retry (once the lock has run out: RECOVER) finishes the request, re-asking the provider
with the same token; a client that never retries leaves a charge without a payment. Redis
replication is asynchronous too: a failover can lose a claim. Both are what this design trades
for one round trip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from reference_impl.common.db import Pool
from reference_impl.common.redis_client import Script, ScriptRunner, SentinelMaster
from reference_impl.idempotency.core import Claim, Outcome, Policy, Record, State, StoredResponse
from reference_impl.idempotency.ledger import (
    ChargeThenRecord,
    Checkpoint,
    PaymentRequest,
    Publish,
    carry_payment,
    decode_headers,
    encode_headers,
    new_token,
)
from reference_impl.idempotency.provider import ProviderFault

SCRIPT_DIR = Path(__file__).parent
TTL_SLACK_MS = 1000
"""Extra life of a record past its expiry (app clocks run ahead of Redis's)."""
_FIELDS = ("f", "s", "l", "e", "rs", "rh", "rb")


def record_key(prefix: str, tenant_id: str, key: str) -> str:
    return f"{prefix}:{{{tenant_id}}}:idem:{hashlib.sha256(key.encode()).hexdigest()}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _response(status: bytes | str, headers: bytes | str, body: bytes | str) -> StoredResponse:
    return StoredResponse(int(status), decode_headers(headers), body if isinstance(body, bytes) else body.encode())


class RedisIdempotency(ChargeThenRecord):
    design = "redis"

    def __init__(self, redis: Redis, pool: Pool, prefix: str, policy: Policy | None = None, *,
                 ttl_slack_ms: int = TTL_SLACK_MS, publish: Publish | None = None, redis_url: str | None = None,
                 sentinel: SentinelMaster | None = None) -> None:
        self.redis = redis
        self._pool = pool
        self._publish = publish
        self.prefix = prefix
        self.policy = policy or Policy()
        self._ttl_slack_ms = ttl_slack_ms
        self._claim, self._finish, self._release = (Script((SCRIPT_DIR / f"{name}.lua").read_text())
                                                    for name in ("claim", "finish", "release"))
        # The claim is every keyed POST's round trip (a replay's only one): with `redis_url` it goes
        # through the service's auto-pipelined runner, as the rate limiter's script does.
        self._claim_runner = (ScriptRunner(redis_url, self._claim.source, sentinel=sentinel)
                              if redis_url else None)

    async def close(self) -> None:
        if self._claim_runner is not None:
            await self._claim_runner.close()

    async def load(self) -> None:
        """SCRIPT LOAD once (at startup), so the first request does not pay the NOSCRIPT detour."""
        for script in (self._claim, self._finish, self._release):
            await script.load(self.redis)

    async def claim(self, tenant_id: str, key: str, fingerprint: str, now_us: int, *,
                    payment: PaymentRequest | None = None) -> Claim:
        """Decide, and claim the key when the decision says so, in one round trip. `payment` is not
        kept: a request is recovered only by its own retry, which brings its body again."""
        p = self.policy
        keys = [record_key(self.prefix, tenant_id, key)]
        args = [now_us, fingerprint, p.lock_timeout_us, p.retention_us, p.conflict_retry_after_s, new_token(),
                self._ttl_slack_ms]
        reply: Sequence[bytes] = await (self._claim_runner(keys, args) if self._claim_runner is not None
                                        else self._claim(self.redis, keys, args))
        outcome, state, token, retry_after, status, headers, body = reply
        decided = Outcome(_text(outcome))
        if decided in (Outcome.EXECUTE, Outcome.RECOVER):
            return Claim(decided, tenant_id, key, _text(token), State(_text(state)))
        if decided == Outcome.REPLAY:
            return Claim(decided, tenant_id, key, response=_response(status, headers, body))
        if decided == Outcome.CONFLICT:
            return Claim(decided, tenant_id, key, retry_after_s=int(retry_after))
        return Claim(decided, tenant_id, key)

    async def finish(self, claim: Claim, response: StoredResponse) -> StoredResponse:
        """Store the response; returns what is stored (see PostgresIdempotency.finish)."""
        reply = await self._finish(self.redis, [record_key(self.prefix, claim.tenant_id, claim.key)],
                                   [claim.token, response.status, encode_headers(response.headers), response.body])
        return _response(*reply[1:]) if int(reply[0]) == 2 else response

    async def release(self, claim: Claim, now_us: int) -> None:
        await self._release(self.redis, [record_key(self.prefix, claim.tenant_id, claim.key)], [claim.token, now_us])

    async def pay(self, claim: Claim, request: PaymentRequest, now_us: int, *, fault: ProviderFault | None = None,
                  checkpoint: Checkpoint | None = None) -> StoredResponse:
        """Charge, record, finish (`ledger.carry_payment`); ProviderTimeout as in the postgres design."""
        if not claim.runs:
            raise ValueError(f"a {claim.outcome} claim does not run")
        return await carry_payment(self, self._pool, claim, request, now_us, fault, checkpoint, self._publish)

    async def record(self, tenant_id: str, key: str) -> Record | None:
        """The stored record, as the core sees it (None when absent)."""
        f, s, locked, expires, status, headers, body = await self.redis.hmget(
            record_key(self.prefix, tenant_id, key), list(_FIELDS))
        if f is None:
            return None
        response = None if status is None else _response(status, headers, body)
        return Record(_text(f), State(_text(s)), int(locked), int(expires), response)
