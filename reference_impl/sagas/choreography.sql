-- choreography's transactional outbox and inbox (reference_impl/sagas/choreography.py, relay.py), in each
-- database that publishes or consumes saga events: the main one (orders) and the three participants'.
-- Applied at start under the migration lock; idempotent.

CREATE SCHEMA IF NOT EXISTS saga_events;

-- Events to publish, written in the same local transaction as the state change they announce; the
-- relay publishes unsent rows to the Redis stream and then marks them sent (so at least once).
-- `event_id` is '<saga id>:<seq>': every event of a saga follows from the one before, so two handlers
-- of one delivery would write the same id, and the second is refused.
CREATE TABLE IF NOT EXISTS saga_events.outbox (
    id         bigserial PRIMARY KEY,
    event_id   text NOT NULL UNIQUE,
    saga_id    text NOT NULL,
    body       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at    timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON saga_events.outbox (id) WHERE sent_at IS NULL;

-- Events a consumer has acted on, committed with the effect and the event it published in reply:
-- a duplicate delivery finds its row and is only acknowledged.
CREATE TABLE IF NOT EXISTS saga_events.inbox (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    saga_id      text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer, event_id)
);
