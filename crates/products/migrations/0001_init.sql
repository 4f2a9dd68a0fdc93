-- The catalogue. Stock is not here: the inventory service owns it (it learns the initial
-- stock from product.created). Constraint names are what the service maps to errors.
CREATE TABLE products (
    -- uuid v7: time ordered, so ORDER BY id is creation order and keyset pagination
    -- needs no other index.
    id          UUID        PRIMARY KEY,
    sku         TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    description TEXT        NOT NULL DEFAULT '',
    price_cents BIGINT      NOT NULL,
    currency    TEXT        NOT NULL DEFAULT 'EUR',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT products_sku_unique UNIQUE (sku),
    CONSTRAINT products_price_cents_nonnegative CHECK (price_cents >= 0),
    CONSTRAINT products_currency_iso CHECK (currency ~ '^[A-Z]{3}$')
);
