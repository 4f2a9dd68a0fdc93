-- The W3C traceparent of the request that placed the order: a compensation fired by its
-- deadline (in a trace of its own) links to the order's trace. NULL when not traced.
ALTER TABLE orders ADD COLUMN trace_context TEXT;
