-- The catalog. Prices are integer minor units with an ISO 4217 currency.
-- Deleted products are kept (soft delete) so past orders still make sense.
CREATE TABLE products (
    id             uuid PRIMARY KEY,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description    text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    price_minor    bigint NOT NULL CHECK (price_minor >= 0),
    currency       text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Stock recorded in inventory? 'pending' rows are retried by the
    -- stock sync until inventory has a record for them.
    stock_status   text NOT NULL DEFAULT 'pending' CHECK (stock_status IN ('pending', 'synced')),
    initial_stock  bigint NOT NULL DEFAULT 0 CHECK (initial_stock >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz
);

-- Names are unique among live products, ignoring case.
CREATE UNIQUE INDEX products_live_name_idx ON products (lower(name)) WHERE deleted_at IS NULL;
CREATE INDEX products_live_created_idx ON products (created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX products_pending_idx ON products (created_at) WHERE stock_status = 'pending';
