-- One notification per order event, owned by the event's user. The UNIQUE
-- event id makes storing idempotent: a redelivered event inserts nothing.
CREATE TABLE notifications (
    id          uuid PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    user_id     uuid NOT NULL,
    order_id    uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('order.confirmed', 'order.cancelled')),
    message     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz
);

-- A user's notifications, newest first.
CREATE INDEX notifications_user_created_idx ON notifications (user_id, created_at DESC, id DESC);
