-- The reservations still held (reserved, not yet committed or released),
-- oldest first: the order service reserves before it stores the order, and
-- settles a reservation whose order was never stored once it is older than
-- any saga can be (`ListHeld`). Partial, so it stays as small as the
-- reservations in flight.
CREATE INDEX reservations_held_idx ON reservations (created_at) WHERE state = 'reserved';
