"""Client retries: backoff policies, a retry budget, Retry-After and a circuit breaker (simulation-only pattern)."""
