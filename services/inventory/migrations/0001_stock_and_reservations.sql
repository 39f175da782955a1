-- Stock per product and one reservation per order.
-- Invariants are enforced by the database too, not only by the code.

CREATE TABLE stock (
    product_id  uuid PRIMARY KEY,
    available   bigint NOT NULL CHECK (available >= 0),
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservations (
    order_id    uuid PRIMARY KEY,
    product_id  uuid NOT NULL REFERENCES stock (product_id),
    quantity    bigint NOT NULL CHECK (quantity > 0),
    state       text NOT NULL CHECK (state IN ('reserved', 'released', 'committed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX reservations_product_idx ON reservations (product_id);
