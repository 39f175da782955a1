-- The relay claims rows for a lease instead of holding a transaction (and
-- a pooled connection) across the broker's confirm: `available_at` is when
-- a row may next be claimed (now, after a lease, or after a retry backoff
-- for an event that reached no queue). Published rows are pruned after the
-- retention period, oldest first.
ALTER TABLE outbox ADD COLUMN available_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_error text;
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
