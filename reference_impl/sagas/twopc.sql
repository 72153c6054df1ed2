-- The two-phase commit coordinator's log (reference_impl/sagas/twopc.py), in the service's main database
-- beside sagas.orders. Applied at every start under the migration lock; idempotent.

CREATE SCHEMA IF NOT EXISTS sagas;

-- One row per attempt at an order's global transaction. The row exists before any participant does
-- work, so every prepared transaction (gid 'saaslab2pc:<saga id>:<attempt>:<participant>') has one.
-- `decision` is written once, by whoever gets there first (`WHERE decision IS NULL`): the coordinator
-- after every participant prepared ('commit'), or recovery presuming an abandoned attempt aborted
-- ('abort'). A row stays unresolved until every branch was committed or rolled back as decided.
CREATE TABLE IF NOT EXISTS sagas.twopc_log (
    saga_id     text NOT NULL,
    attempt     integer NOT NULL CHECK (attempt >= 1),
    gids        text[] NOT NULL,
    decision    text CHECK (decision IN ('commit', 'abort')),
    state       jsonb,            -- core.SagaState.to_dict() at the decision; NULL for a presumed abort
    began_us    bigint NOT NULL,  -- the attempt's first lock could be taken from here on
    prepared_us bigint,           -- every branch prepared: in doubt from here until resolved
    decided_us  bigint,
    resolved_us bigint,           -- every branch committed or rolled back: its locks are gone
    PRIMARY KEY (saga_id, attempt)
);
CREATE INDEX IF NOT EXISTS twopc_unresolved ON sagas.twopc_log (saga_id) WHERE resolved_us IS NULL;
