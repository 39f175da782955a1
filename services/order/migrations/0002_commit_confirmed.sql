-- A CONFIRMED order's reservation is committed in inventory (its units are
-- sold and leave `reserved`). The flag is set in the same statement that
-- confirms the order, so no confirmed order is forgotten; a background pass
-- commits and clears it, retrying while inventory is unreachable. Cancelling
-- clears it (the release returns the units whether committed or not).
ALTER TABLE orders ADD COLUMN needs_commit boolean NOT NULL DEFAULT false;
-- Orders confirmed before this migration were never committed.
UPDATE orders SET needs_commit = true WHERE status = 'CONFIRMED';
CREATE INDEX orders_needs_commit_idx ON orders (updated_at) WHERE needs_commit;
