-- Sharding's control tables, in the main (control) database. Idempotent: applied at every start.
--
-- shard_servers: every shard server the service knows (its URL comes from settings at each start);
--   state: active (tenants may live there), new (a spare, taken into use by isolate or add-shard).
-- shard_membership: the shards the hash routers hash over (`initial`: the directory's fallback).
-- shard_directory: explicit placements (every tenant moved, under any router; every tenant placed, under
--   the directory). `fenced`: the tenant is at its move's cutover; lookups of it are not cached.
-- shard_jobs: moves, isolations and shard additions, as GET /admin/jobs/{id} shows them; `detail` holds the
--   plan and the move in progress after its last step, `owner` the worker running it, which renews
--   `heartbeat_at` (reference_impl/sharding/jobs.py: a job whose heartbeat stops is taken over and resumed).

CREATE TABLE IF NOT EXISTS shard_servers (
    shard int PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('active', 'new', 'draining'))
);

CREATE TABLE IF NOT EXISTS shard_membership (
    id      int PRIMARY KEY CHECK (id = 1),
    shards  int[] NOT NULL,
    initial int[] NOT NULL,
    version bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS shard_directory (
    tenant_id uuid PRIMARY KEY,
    shard     int NOT NULL,
    epoch     int NOT NULL DEFAULT 0,
    fenced    boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS shard_jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    state            text NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    detail           jsonb NOT NULL DEFAULT '{}',
    copied_rows      bigint NOT NULL DEFAULT 0,
    write_blocked_ms double precision NOT NULL DEFAULT 0,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at      timestamptz
);

ALTER TABLE shard_jobs ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE shard_jobs ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
