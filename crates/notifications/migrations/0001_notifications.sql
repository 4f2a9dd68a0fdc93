CREATE TABLE notifications (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('welcome', 'order_confirmed', 'order_cancelled')),
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    order_id UUID,
    -- The event it answers: a redelivered event adds nothing.
    source_event_id UUID NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Idempotent by meaning too: the same fact re-sent with a new event id adds nothing.
CREATE UNIQUE INDEX notifications_one_per_order_and_kind ON notifications (order_id, kind) WHERE order_id IS NOT NULL;
CREATE UNIQUE INDEX notifications_one_welcome ON notifications (user_id) WHERE kind = 'welcome';
CREATE INDEX notifications_by_user ON notifications (user_id, created_at DESC, id DESC);
