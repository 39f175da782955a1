-- The database work of ONE order in stockmesh, as pgbench transactions
-- against the same tables (the services' own migrations, applied by
-- scripts/bench.sh to one database), statement for statement as the
-- services send them (autocommit where they use autocommit), in order:
--   (product:     not read per order: order keeps product answers for
--                 PRODUCT_CACHE_TTL_MS, so a read per product per second is
--                 all that reaches product's database; left out here)
--   inventory:    Reserve: conditional stock update + the order's keyed
--                 reservation row, one statement (the common path)
--   order:        the order stored CONFIRMED + its outbox row, one
--                 statement (the order is stored once, after the reserve)
--   relay:        mark the outbox row published (per batch in the service;
--                 here per order, so this is pessimistic). A new order's
--                 row is stored already leased and handed to the relay in
--                 memory: no claim on the common path
--   notification: store the notification (idempotent insert)
--   (the inventory commit of the reservation runs per batch of confirms,
--   one transaction for many orders; left out here)
-- Everything runs in one database here, so the ceiling is optimistic: the
-- real system spreads the same statements over four databases and pays a
-- network hop and a process switch between each step.
\set p random(1, 100)
\set q 1
SELECT gen_random_uuid() AS id \gset o_
WITH taken AS (
  UPDATE stock SET available = available - :q, reserved = reserved + :q, updated_at = now()
  WHERE product_id = ('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid AND available >= :q
    AND NOT EXISTS (SELECT 1 FROM reservations WHERE order_id = ':o_id'::uuid)
  RETURNING product_id, available, reserved
), held AS (
  INSERT INTO reservations (order_id, product_id, quantity, state)
  SELECT ':o_id'::uuid, product_id, :q, 'reserved' FROM taken
)
SELECT product_id, available, reserved FROM taken;
WITH stored AS (
  INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, total_minor, currency, status, needs_commit, trace_id)
  VALUES (':o_id'::uuid, gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid, 'p', :q, 199, 199, 'EUR', 'CONFIRMED', false, md5(random()::text))
  ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING id
), event AS (
  INSERT INTO outbox (event_id, routing_key, payload, trace_context, available_at)
  SELECT gen_random_uuid(), 'order.confirmed', '{"type":"order.confirmed","version":1}', '{}',
    now() + make_interval(secs => 20) FROM stored
  RETURNING id
)
SELECT (SELECT id FROM event) AS id \gset ob_
UPDATE outbox SET published_at = now(), last_error = NULL WHERE id = :ob_id;
INSERT INTO notifications (id, event_id, user_id, order_id, kind, message)
  VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), ':o_id'::uuid, 'order.confirmed', 'Your order is confirmed.')
  ON CONFLICT (event_id) DO NOTHING;
