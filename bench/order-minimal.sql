-- The LEAST durable work any design of an order needs, as pgbench
-- transactions on the services' own schema (their migrations, applied by
-- scripts/bench.sh to one database): three commits, one round trip each.
--   1. take the stock: the conditional stock update and the order's keyed
--      reservation row (what makes a retried take idempotent), one statement;
--   2. store the order, already CONFIRMED, with its event, one statement;
--   3. store the notification (idempotent by event id).
-- No PENDING row, no separate confirm, no publish bookkeeping, no gRPC or
-- broker hop, one database: no design can do an order with less. The ratio
-- of stockmesh to this ceiling is `make bench`'s headline; the ratio to
-- bench/order-ceiling.sql (our own statements, one for one) says how much
-- of the gap is the design's round trips rather than the plumbing.
\set p random(1, 100)
\set q 1
WITH taken AS (
  UPDATE stock SET available = available - :q, updated_at = now()
  WHERE product_id = ('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid AND available >= :q
  RETURNING product_id
)
INSERT INTO reservations (order_id, product_id, quantity, state)
  SELECT gen_random_uuid(), product_id, :q, 'committed' FROM taken;
WITH stored AS (
  INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, total_minor, currency, status, trace_id)
  VALUES (gen_random_uuid(), gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid, 'p', :q, 199, 199, 'EUR', 'CONFIRMED', md5(random()::text))
  RETURNING id
)
INSERT INTO outbox (event_id, routing_key, payload, trace_context)
  SELECT gen_random_uuid(), 'order.confirmed', '{"type":"order.confirmed","version":1}', '{}' FROM stored;
INSERT INTO notifications (id, event_id, user_id, order_id, kind, message)
  VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'order.confirmed', 'Your order is confirmed.')
  ON CONFLICT (event_id) DO NOTHING;
