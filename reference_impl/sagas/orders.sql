-- The orders and their sagas, in the service's main database: what GET /v1/orders reads, whatever
-- the design. Applied at every start under the migration lock (reference_impl/common/db.py); idempotent.

CREATE SCHEMA IF NOT EXISTS sagas;

CREATE TABLE IF NOT EXISTS sagas.orders (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL,
    design          text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'completed', 'compensated', 'failed')),
    request         jsonb NOT NULL,   -- core.Order.to_dict()
    steps           jsonb NOT NULL,   -- core.step_views(): [{"name", "state", "at_us"}]
    state           jsonb,            -- the design's own progress (orchestration: core.SagaState.to_dict())
    due_at_us       bigint NOT NULL DEFAULT 0,  -- recovery looks at a pending saga from then on
    version         integer NOT NULL DEFAULT 0, -- bumped by every save: a stale driver's save is refused
    created_us      bigint NOT NULL,
    finished_us     bigint,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS orders_by_tenant ON sagas.orders (tenant_id, created_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS orders_due ON sagas.orders (due_at_us) WHERE status = 'pending';
