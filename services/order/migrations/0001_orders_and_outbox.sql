-- Orders and the transactional outbox of the events they produce.
CREATE TABLE orders (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    product_id        uuid NOT NULL,
    product_name      text NOT NULL,
    quantity          bigint NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor >= 0),
    total_minor       bigint NOT NULL CHECK (total_minor >= 0),
    currency          text NOT NULL,
    status            text NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'FAILED', 'CANCELLED')),
    failure_reason    text,
    -- A reservation may be held in inventory that must still be released
    -- (compensation that has not succeeded yet; retried in the background).
    needs_release     boolean NOT NULL DEFAULT false,
    idempotency_key   text,
    request_hash      text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX orders_idempotency_idx ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_pending_idx ON orders (created_at) WHERE status = 'PENDING';
CREATE INDEX orders_needs_release_idx ON orders (updated_at) WHERE needs_release;

-- Events committed with the order change that caused them; the relay
-- publishes them in id order and marks them only after the broker confirms.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    routing_key     text NOT NULL,
    payload         jsonb NOT NULL,
    -- W3C context (traceparent, tracestate, baggage) of the request that
    -- created the event, so the publish joins the order's trace.
    trace_context   jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);

CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
