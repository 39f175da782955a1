-- The database work of ONE order in stockmesh, as pgbench transactions
-- against the same tables (the services' own migrations, applied by
-- scripts/bench.sh to one database), statement for statement as the
-- services send them (autocommit where they use autocommit), in order:
--   (product:     not read per order: order keeps product answers for
--                 PRODUCT_CACHE_TTL_MS, so a read per product per second is
--                 all that reaches product's database; left out here)
--   order:        insert the order PENDING
--   inventory:    insert the reservation + conditional stock update (Reserve)
--   order:        order CONFIRMED + outbox row, one statement (a CTE)
--   relay:        lock the pending outbox row, mark it published
--   notification: store the notification (idempotent insert)
-- Everything runs in one database here, so the ceiling is optimistic: the
-- real system spreads the same statements over four databases and pays a
-- network hop and a process switch between each step.
\set p random(1, 100)
\set q 1
INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, total_minor, currency, status, trace_id)
  VALUES (gen_random_uuid(), gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid, 'p', :q, 199, 199, 'EUR', 'PENDING', md5(random()::text))
  RETURNING id \gset o_
BEGIN;
INSERT INTO reservations (order_id, product_id, quantity, state)
  VALUES (':o_id'::uuid, ('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid, :q, 'reserved') ON CONFLICT (order_id) DO NOTHING;
UPDATE stock SET available = available - :q, reserved = reserved + :q, updated_at = now()
  WHERE product_id = ('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid AND available >= :q
  RETURNING product_id, available, reserved;
COMMIT;
WITH changed AS (
  UPDATE orders SET status = 'CONFIRMED', needs_release = false, updated_at = now()
  WHERE id = ':o_id'::uuid AND status = 'PENDING' RETURNING id
), event AS (
  INSERT INTO outbox (event_id, routing_key, payload, trace_context)
  SELECT gen_random_uuid(), 'order.confirmed', '{"type":"order.confirmed","version":1}', '{}' FROM changed
  RETURNING id
)
SELECT (SELECT id FROM event) AS id, (SELECT id FROM changed) AS order_id \gset ob_
BEGIN;
SELECT id FROM outbox WHERE id = :ob_id AND published_at IS NULL FOR UPDATE SKIP LOCKED;
UPDATE outbox SET published_at = now() WHERE id = :ob_id;
COMMIT;
INSERT INTO notifications (id, event_id, user_id, order_id, kind, message)
  VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), ':o_id'::uuid, 'order.confirmed', 'Your order is confirmed.')
  ON CONFLICT (event_id) DO NOTHING;
