-- The shipping participant's own database (<main database>_shipping). Idempotent.

CREATE SCHEMA IF NOT EXISTS saga_shipping;

-- One row per saga step key. `tombstone`: a cancel arrived before its schedule; the late schedule is refused.
CREATE TABLE IF NOT EXISTS saga_shipping.shipments (
    key        text PRIMARY KEY,
    saga_id    text NOT NULL,
    tenant_id  text NOT NULL,
    items      jsonb NOT NULL,
    state      text NOT NULL CHECK (state IN ('scheduled', 'cancelled', 'tombstone')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS shipments_saga ON saga_shipping.shipments (saga_id);
