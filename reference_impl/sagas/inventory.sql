-- The inventory participant's own database (<main database>_inventory). Applied at every start under
-- the migration lock (reference_impl/common/db.py), so every statement is idempotent.

CREATE SCHEMA IF NOT EXISTS saga_inventory;

-- Per tenant and SKU. Every unit ever stocked is on hand, reserved by an unfinished order, or shipped:
-- on_hand + reserved + shipped = stocked (a PUT of on_hand moves `stocked` by the same difference).
CREATE TABLE IF NOT EXISTS saga_inventory.stock (
    tenant_id  text   NOT NULL,
    sku        text   NOT NULL,
    on_hand    bigint NOT NULL CHECK (on_hand >= 0),
    reserved   bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    shipped    bigint NOT NULL DEFAULT 0 CHECK (shipped >= 0),
    stocked    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, sku)
);

-- One row per saga step key, whatever happened: the outcome of the first attempt is the outcome of
-- every later one. `tombstone`: a release arrived before its reserve, so the late reserve is refused.
CREATE TABLE IF NOT EXISTS saga_inventory.reservations (
    key        text PRIMARY KEY,
    saga_id    text NOT NULL,
    tenant_id  text NOT NULL,
    items      jsonb NOT NULL,  -- {"sku": qty, ...}
    state      text NOT NULL CHECK (state IN ('reserved', 'committed', 'released', 'refused', 'tombstone')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS reservations_saga ON saga_inventory.reservations (saga_id);
