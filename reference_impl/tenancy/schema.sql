-- Tenancy schema. Applied at every start, in one transaction under an advisory lock (common/db.py),
-- so every statement here must be idempotent.
--
-- Shared tables serve the `filtered`, `leaky` and `rls` designs; the `schema` design keeps each
-- tenant's projects and payments in a schema of its own (created by repository.py).

CREATE TABLE IF NOT EXISTS tenants (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    plan         text NOT NULL CHECK (plan IN ('free', 'pro', 'enterprise')),
    limits       jsonb,
    api_key_hash text NOT NULL UNIQUE,  -- sha256 of the key; the key itself is never stored
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- clock_timestamp(), not now(): rows inserted in one transaction still get distinct, ordered
-- times, and (created_at, id) is the keyset pagination order.
CREATE TABLE IF NOT EXISTS projects (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS projects_tenant_page ON projects (tenant_id, created_at, id);

CREATE TABLE IF NOT EXISTS payments (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    amount     bigint NOT NULL CHECK (amount > 0),
    currency   text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS payments_tenant_page ON payments (tenant_id, created_at, id);

-- The `rls` design runs each transaction as this role. NOLOGIN: reachable only through SET ROLE
-- from the service's own login. NOBYPASSRLS: policies always apply to it. Roles are cluster-wide,
-- so a migration of another database may be creating it at the same moment.
DO $$
BEGIN
    CREATE ROLE saaslab_app NOLOGIN NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- A superuser may SET ROLE to anyone; any other login role needs membership.
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT saaslab_app TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO saaslab_app;
GRANT SELECT, INSERT, DELETE ON projects, payments TO saaslab_app;

-- Row-level security: a row is visible and writable only while `saaslab.tenant_id` names its tenant.
-- FORCE applies the policies to the table owner too. The other designs therefore need a login role
-- that bypasses RLS (a superuser, as in the lab, or one WITH BYPASSRLS); saaslab_app never does.
-- NULLIF: once set in a session, an unset transaction-local setting reads as '' rather than NULL.
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
ALTER TABLE payments ENABLE ROW LEVEL SECURITY;
ALTER TABLE payments FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['projects', 'payments'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_policies
                       WHERE schemaname = 'public' AND tablename = t AND policyname = 'tenant_isolation') THEN
            EXECUTE format(
                'CREATE POLICY tenant_isolation ON %I'
                ' USING (tenant_id = NULLIF(current_setting(''saaslab.tenant_id'', true), '''')::uuid)'
                ' WITH CHECK (tenant_id = NULLIF(current_setting(''saaslab.tenant_id'', true), '''')::uuid)',
                t);
        END IF;
    END LOOP;
END
$$;
