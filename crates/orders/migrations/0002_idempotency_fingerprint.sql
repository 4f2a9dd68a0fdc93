-- What an idempotent request asked for: a key reused with another body is refused.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS idempotency_fingerprint TEXT;
