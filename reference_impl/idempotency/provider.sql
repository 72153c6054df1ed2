-- The lab's external charge provider. Applied at every start under the migration lock
-- (common/db.py), so every statement is idempotent. It lives in a schema of its own: it stands
-- for another company's system, which our code reaches only through provider.py, in transactions
-- of its own, never inside ours.

CREATE SCHEMA IF NOT EXISTS lab_provider;

-- One row per (account, token), declined attempts included, as a real provider keeps failed
-- charges: asking again with a token returns the first outcome, success or refusal.
CREATE TABLE IF NOT EXISTS lab_provider.charges (
    id         text PRIMARY KEY,
    account    text NOT NULL,  -- the merchant account: our tenant
    token      text NOT NULL,  -- the caller's idempotency token, scoped to the account
    reference  text,           -- the merchant's own reference (we send the Idempotency-Key)
    amount     bigint NOT NULL CHECK (amount > 0),
    currency   text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status     text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (account, token)
);
