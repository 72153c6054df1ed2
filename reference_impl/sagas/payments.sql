-- The payments participant's own database (<main database>_payments), beside the lab provider's
-- schema (reference_impl/idempotency/provider.sql), which holds the money that moved. Idempotent.

CREATE SCHEMA IF NOT EXISTS saga_payments;

-- One row per saga step key. The provider's charge uses the key as its token, so the provider
-- dedupes retries; this row says what the saga knows of it. `tombstone`: a refund arrived before
-- its charge (nothing to refund), so the late charge is refused.
CREATE TABLE IF NOT EXISTS saga_payments.payments (
    key        text PRIMARY KEY,
    saga_id    text NOT NULL,
    tenant_id  text NOT NULL,
    amount     bigint NOT NULL CHECK (amount > 0),
    currency   text NOT NULL,
    state      text NOT NULL CHECK (state IN ('charging', 'charged', 'declined', 'refunded', 'tombstone')),
    charge_id  text,            -- the provider's charge
    refunded   bigint NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS payments_saga ON saga_payments.payments (saga_id);
