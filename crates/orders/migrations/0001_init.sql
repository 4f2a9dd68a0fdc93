-- Orders and the persisted state of their sagas.
CREATE TABLE orders (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    status TEXT NOT NULL,
    cancel_reason TEXT,
    total_cents BIGINT NOT NULL CHECK (total_cents >= 0),
    currency TEXT NOT NULL,
    payment_token TEXT NOT NULL,
    -- the saga's state machine (saga::SagaState as JSON)
    saga JSONB NOT NULL,
    -- bumped by every transition: an update that read an older version applies nothing
    version BIGINT NOT NULL DEFAULT 0,
    -- when the current waiting state gives up (NULL: nothing awaited)
    deadline_at TIMESTAMPTZ,
    correlation_id UUID NOT NULL,
    idempotency_key TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_idempotency UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_deadline ON orders (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX orders_user ON orders (user_id, id DESC);

CREATE TABLE order_items (
    order_id UUID NOT NULL REFERENCES orders (id),
    line INT NOT NULL,
    product_id UUID NOT NULL,
    quantity INT NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line)
);

CREATE TABLE order_history (
    id BIGSERIAL PRIMARY KEY,
    order_id UUID NOT NULL REFERENCES orders (id),
    status TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_history_order ON order_history (order_id, id);
