-- The W3C traceparent of the transaction that recorded the notification: its delivery (and
-- the notification.sent it publishes) continues the order's trace. NULL when not traced.
ALTER TABLE notifications ADD COLUMN trace_context TEXT;
