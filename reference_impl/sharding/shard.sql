-- What every shard holds besides tenancy's tables (reference_impl/tenancy/schema.sql, applied first):
-- the per-tenant move state and the change log the mover catches up from. Idempotent.
--
-- shard_tenant_state: one row per tenant being moved off this shard, or moved away from it.
--   capturing: the mover copies the tenant; every write to its rows is logged in shard_changes.
--   fenced: the cutover; writes of the tenant are refused (SQLSTATE SH001) and the service retries
--   them against the new placement. A tenant moved away stays fenced here, so a writer with a stale
--   placement can never write to the old shard again.
-- A write locks its tenant's state row (FOR SHARE) when there is one, so the fence (an UPDATE of that
-- row) waits for the tenant's writes in flight and no write commits unlogged after it.

CREATE TABLE IF NOT EXISTS shard_tenant_state (
    tenant_id uuid PRIMARY KEY,
    state     text NOT NULL CHECK (state IN ('capturing', 'fenced')),
    epoch     int NOT NULL
);

CREATE TABLE IF NOT EXISTS shard_changes (
    seq       bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    tbl       text NOT NULL,
    op        text NOT NULL,
    id        uuid NOT NULL,
    row       jsonb
);
CREATE INDEX IF NOT EXISTS shard_changes_tenant ON shard_changes (tenant_id, seq);

CREATE OR REPLACE FUNCTION shard_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tenant uuid;
    s text;
BEGIN
    -- The mover's own copies and deletes (SET LOCAL saaslab.mover = 'on') pass the guard unlogged.
    IF current_setting('saaslab.mover', true) = 'on' THEN
        RETURN NULL;
    END IF;
    tenant := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
    SELECT state INTO s FROM shard_tenant_state WHERE tenant_id = tenant FOR SHARE;
    IF s IS NULL THEN
        RETURN NULL;
    END IF;
    IF s = 'fenced' THEN
        RAISE EXCEPTION 'tenant % is fenced on this shard (moving or moved)', tenant USING ERRCODE = 'SH001';
    END IF;
    INSERT INTO shard_changes (tenant_id, tbl, op, id, row)
    VALUES (tenant, TG_TABLE_NAME, TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
            CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END);
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['projects', 'payments'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = t || '_shard_guard') THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %I '
                           'FOR EACH ROW EXECUTE FUNCTION shard_guard()', t || '_shard_guard', t);
        END IF;
    END LOOP;
END
$$;

-- The tenants of record (and their API keys) live in the control database; a shard holds their rows only,
-- so the foreign keys of tenancy's tables to its `tenants` table cannot hold here.
ALTER TABLE projects DROP CONSTRAINT IF EXISTS projects_tenant_id_fkey;
ALTER TABLE payments DROP CONSTRAINT IF EXISTS payments_tenant_id_fkey;
