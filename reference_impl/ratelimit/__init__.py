"""Tenant rate limiting: fixed window, sliding log, sliding counter, token bucket, GCRA, and the unsafe naive design."""
