-- One payment per order: the unique order_id is what makes a repeated payment.requested
-- answer with the first result instead of charging again.
CREATE TABLE payments (
    id UUID PRIMARY KEY,
    order_id UUID NOT NULL UNIQUE,
    user_id UUID NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'captured', 'declined', 'refunded')),
    decline_code TEXT,
    -- When the provider answers a slow charge; the capturer settles pending rows once due.
    capture_at TIMESTAMPTZ,
    -- The request's saga and event, so that a late capture's event continues the same trace.
    correlation_id UUID NOT NULL,
    request_event_id UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    captured_at TIMESTAMPTZ,
    refunded_at TIMESTAMPTZ
);
CREATE INDEX payments_due ON payments (capture_at) WHERE status = 'pending';
