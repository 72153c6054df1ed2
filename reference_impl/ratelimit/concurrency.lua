-- Concurrent-requests limiter: the twin of core.acquire.
-- KEYS: ZSET {lease_id: expiry µs}.
-- ARGV: now_us (-1 = TIME), lease_id, limit, lease_us, ttl_slack_ms.
-- Returns {allowed, in_flight, retry_after_us}.
local now = clock(ARGV[1])
local key, lease_id, limit, lease_us = KEYS[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

-- Leases past their expiry belong to crashed or stuck workers: their slots come back.
redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
-- Acquiring a lease already held renews it rather than taking a second slot.
local others = redis.call('ZCARD', key)
if redis.call('ZSCORE', key, lease_id) then
    others = others - 1
end
local allowed = others < limit
if allowed then
    redis.call('ZADD', key, int(now + lease_us), lease_id)
end

local in_flight = redis.call('ZCARD', key)
local retry = 0
if not allowed then
    retry = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) - now
end
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
if last then
    redis.call('PEXPIRE', key, int(ceil_div(tonumber(last) - now, 1000) + tonumber(ARGV[5])))
end
return {allowed and 1 or 0, in_flight, retry}
