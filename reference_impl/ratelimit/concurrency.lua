-- Concurrent-requests limiter on its own (prelude.lua's acquire_lease, the twin of core.acquire), for
-- requests whose rate-limit script does not take the lease itself (rate limiting off, or the naive design).
-- KEYS: ZSET {lease_id: expiry µs}.
-- ARGV: now_us (-1 = TIME), lease_id, limit, lease_us, ttl_slack_ms.
-- Returns {allowed, in_flight, retry_after_us}.
local allowed, in_flight, retry = acquire_lease(KEYS[1], clock(ARGV[1]), ARGV[2], tonumber(ARGV[3]),
                                                tonumber(ARGV[4]))
return {allowed and 1 or 0, in_flight, retry}
