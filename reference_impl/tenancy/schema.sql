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
-- Optimistic concurrency (docs/contract.md, "Tenant-scoped resources"): every update bumps the
-- version, which reads carry as their ETag. Added with IF NOT EXISTS so a database made before the
-- column existed gains it at the next start; its rows start at version 1.
ALTER TABLE projects ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;

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
-- so a migration of another database may be creating it at the same moment. Creating it needs
-- CREATEROLE; a role an administrator created (and granted to the service's login) is used as it is,
-- so a login without CREATEROLE works too. Lacking both, the start fails saying what to grant.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'saaslab_app') THEN
        CREATE ROLE saaslab_app NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        RAISE insufficient_privilege USING
            MESSAGE = format('database user %I may not create role saaslab_app', current_user),
            HINT = format('grant the right: ALTER ROLE %I CREATEROLE (or as an administrator: '
                          'CREATE ROLE saaslab_app NOLOGIN NOBYPASSRLS; GRANT saaslab_app TO %I)',
                          current_user, current_user);
END
$$;

-- A superuser may SET ROLE to anyone (pg_has_role is true for it); any other login role needs membership
-- with the right to SET ROLE. From PostgreSQL 16 a role's creator holds it with ADMIN OPTION only, which
-- counts as MEMBER but not SET, so there the SET right is what is checked (15 and older know no 'SET').
DO $$
DECLARE
    may_set boolean;
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        may_set := pg_has_role(current_user, 'saaslab_app', 'SET');
    ELSE
        may_set := pg_has_role(current_user, 'saaslab_app', 'MEMBER');
    END IF;
    IF NOT may_set THEN
        EXECUTE format('GRANT saaslab_app TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE insufficient_privilege USING
        MESSAGE = format('database user %I may not join role saaslab_app', current_user),
        HINT = format('grant the right: ALTER ROLE %I CREATEROLE (or as an administrator: GRANT saaslab_app TO %I)',
                      current_user, current_user);
END
$$;

GRANT USAGE ON SCHEMA public TO saaslab_app;
GRANT SELECT, INSERT, DELETE ON projects, payments TO saaslab_app;
GRANT UPDATE (name, version) ON projects TO saaslab_app;

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

-- The rls design's reads, each one statement, so that concurrent reads pipeline in one round trip
-- (repository.py, PipelinedReads) instead of costing BEGIN + SET LOCAL, the query and COMMIT each.
-- SECURITY DEFINER and owned by saaslab_app: the query inside runs as that role, under the
-- policies above, after the function has set `saaslab.tenant_id` (transaction-locally: it ends
-- with the caller's transaction, never outliving it on a pooled connection). The queries carry no
-- tenant filter: the policies alone decide, exactly as for the design's other statements.
-- A fixed search_path, as any SECURITY DEFINER function needs; EXECUTE only for the service's login.
CREATE SCHEMA IF NOT EXISTS saaslab_rls AUTHORIZATION saaslab_app;

DO $$
DECLARE
    t text;
    reads text[][] := ARRAY[
        -- name suffix, arguments after the tenant, the query's clauses after FROM <table>
        ARRAY['get', 'object_id uuid', 'WHERE id = object_id'],
        ARRAY['first_page', 'lim integer', 'ORDER BY created_at, id LIMIT lim'],
        ARRAY['next_page', 'after_ts timestamptz, after_id uuid, lim integer',
              'WHERE (created_at, id) > (after_ts, after_id) ORDER BY created_at, id LIMIT lim']];
    r text[];
    fn text;
BEGIN
    FOREACH t IN ARRAY ARRAY['projects', 'payments'] LOOP
        FOREACH r SLICE 1 IN ARRAY reads LOOP
            fn := format('saaslab_rls.%I(tenant uuid, %s)', t || '_' || r[1], r[2]);
            EXECUTE format(
                'CREATE OR REPLACE FUNCTION %s RETURNS SETOF public.%I'
                ' LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
                fn, t,
                format('BEGIN PERFORM set_config(''saaslab.tenant_id'', tenant::text, true);'
                       ' RETURN QUERY SELECT * FROM public.%I %s; END', t, r[3]));
            EXECUTE format('ALTER FUNCTION %s OWNER TO saaslab_app', fn);
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, current_user);
        END LOOP;
    END LOOP;
END
$$;
