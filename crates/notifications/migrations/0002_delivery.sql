-- E-mail delivery through the notifications' own outbox: the handler records a notification
-- as pending in its inbox transaction; the sender worker delivers it and marks it sent (or
-- refused, with the server's reason). Rows from before this migration were only logged:
-- they count as sent.

-- Who gets the mail: kept from user.registered (the users service's data is its own).
CREATE TABLE recipients (
    user_id UUID PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL
);

ALTER TABLE notifications
    DROP CONSTRAINT notifications_kind_check,
    ADD CONSTRAINT notifications_kind_check
        CHECK (kind IN ('welcome', 'order_confirmed', 'order_cancelled', 'payment_refunded')),
    ADD COLUMN html TEXT NOT NULL DEFAULT '',
    ADD COLUMN correlation_id UUID,
    ADD COLUMN status TEXT NOT NULL DEFAULT 'sent' CHECK (status IN ('pending', 'sent', 'refused')),
    -- Delivery attempts started (a claim counts one, so a crash mid-send is counted too).
    ADD COLUMN attempts INT NOT NULL DEFAULT 0,
    -- When the worker may next try: after a failure, or when a claim's lease runs out.
    ADD COLUMN next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The last failure, or the refusal's reason.
    ADD COLUMN last_error TEXT,
    ADD COLUMN sent_at TIMESTAMPTZ;
ALTER TABLE notifications ALTER COLUMN status SET DEFAULT 'pending';
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
