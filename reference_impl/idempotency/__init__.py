"""Idempotency keys: exactly one effect per key under retries, concurrency and crashes."""
