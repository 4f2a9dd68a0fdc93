-- Stock per product. Invariant (checked by the audit): initial + adjusted = available + reserved + sold.
CREATE TABLE stock (
    product_id UUID PRIMARY KEY,
    initial BIGINT NOT NULL CHECK (initial >= 0),
    available BIGINT NOT NULL CHECK (available >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0),
    adjusted BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per order that inventory has heard of. Its primary key is what makes order.created,
-- stock.release_requested and order.confirmed idempotent by order, whatever their event ids.
-- `released` without lines is a tombstone: the release came first, so a late order.created
-- is rejected instead of reserving stock nobody will release.
CREATE TABLE reservations (
    order_id UUID PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'sold', 'rejected')),
    -- [{product_id, quantity}], merged per product, in product id order.
    lines JSONB NOT NULL,
    -- Why it was rejected (re-sent in stock.rejected when order.created comes again).
    reason TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE adjustments (
    id UUID PRIMARY KEY,
    product_id UUID NOT NULL REFERENCES stock (product_id),
    delta BIGINT NOT NULL CHECK (delta <> 0),
    reason TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX adjustments_by_product ON adjustments (product_id, created_at);
