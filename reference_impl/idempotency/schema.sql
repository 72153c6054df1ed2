-- Idempotency schema. Applied at every start, in one transaction under an advisory lock
-- (common/db.py), so every statement here must be idempotent. It does not depend on provider.sql:
-- the provider is reached through its API (provider.py), never joined.
--
-- Times are integer microseconds from the caller's clock (the cores' clock, docs/design.md), never
-- now(): the completer and reaper are then testable at any instant, and Redis and PostgreSQL
-- records mean the same thing.

CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant_id        text NOT NULL,
    key              text NOT NULL,
    token            text NOT NULL UNIQUE,  -- this claim's handle, and the provider's dedupe token
    fingerprint      text NOT NULL,
    state            text NOT NULL CHECK (state IN ('started', 'charge_created', 'finished')),
    locked_until_us  bigint NOT NULL,
    expires_at_us    bigint NOT NULL,
    request_params   jsonb,                 -- what the completer needs to resume a payment
    charge_id        text,                  -- set from charge_created on
    response_status  integer,               -- the response: set exactly when finished
    response_headers jsonb,
    response_body    bytea,
    PRIMARY KEY (tenant_id, key),
    CHECK ((state = 'finished') = (response_status IS NOT NULL)),
    CHECK (state <> 'charge_created' OR charge_id IS NOT NULL),
    -- A locked claim is never expired, so the reaper never deletes one in flight.
    CHECK (expires_at_us >= locked_until_us)
);
-- The completer's scan: unfinished claims by lock expiry. The reaper's: records by expiry.
CREATE INDEX IF NOT EXISTS idempotency_keys_abandoned ON idempotency_keys (locked_until_us)
    WHERE state <> 'finished';
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at_us);

-- The payment ledger: one row per successful charge, whatever the design. The checker counts
-- rows per idempotency key (the `none` design writes one per attempt) and matches each to its
-- charge. Keys may be reused after retention, so nothing here is unique per key; rows outlive
-- the keys (the reaper never touches them).
CREATE TABLE IF NOT EXISTS idempotency_payments (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       text NOT NULL,
    idempotency_key text,
    charge_id       text NOT NULL UNIQUE,  -- one payment per charge: a retried write finds the first
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS idempotency_payments_tenant ON idempotency_payments (tenant_id, created_at, id);
