-- The trace of the request that placed an order (W3C trace id, 32 hex
-- digits), so the console and the on-call engineer can go from any order to
-- its trace in Jaeger. NULL when tracing was off.
ALTER TABLE orders ADD COLUMN trace_id text CHECK (trace_id ~ '^[0-9a-f]{32}$');
