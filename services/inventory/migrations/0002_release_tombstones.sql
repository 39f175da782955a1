-- A Release that finds no reservation leaves a tombstone: a row in state
-- 'released' with no product and quantity 0. A Reserve that arrives after
-- its order's Release (the caller's deadline fired while inventory was
-- still working, or the order sweeper gave the saga up) then finds the
-- order released and takes nothing, instead of holding stock forever.
ALTER TABLE reservations ALTER COLUMN product_id DROP NOT NULL;
ALTER TABLE reservations DROP CONSTRAINT reservations_quantity_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_holding_or_tombstone CHECK (
    (product_id IS NOT NULL AND quantity > 0)
    OR (product_id IS NULL AND quantity = 0 AND state = 'released')
);
