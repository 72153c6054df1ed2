-- Token bucket: the twin of core.token_bucket.
-- KEYS: limiter STRING pack('<i8i8', level in token-µs (one token = window_us units), time of that
-- level), usage counter.
-- ARGV: now_us (-1 = TIME), requests, window_us, cost, ttl_slack_ms, usage_ttl_s.
-- Returns {allowed, remaining, reset_us, retry_after_us, usage, decided_us}.
local now = clock(ARGV[1])
local requests, window, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local capacity = requests * window
local level, updated = capacity, now
local s = redis.call('GET', KEYS[1])
if s then
    level, updated = struct.unpack('<i8i8', s)
    -- After a policy change the old level is clamped to the new capacity.
    if level > capacity then
        level = capacity
    end
end
if now > updated then
    -- A full window refills the whole bucket, so longer idle gaps need not be multiplied.
    local gap = now - updated
    if gap > window then
        gap = window
    end
    level = level + gap * requests
    if level > capacity then
        level = capacity
    end
    updated = now
end

local need = cost * window
local allowed = level >= need
if allowed then
    level = level - need
end
local ahead = updated - now -- > 0 only when the clock stepped back
local retry = 0
if not allowed then
    retry = ahead + ceil_div(need - level, requests)
end
local reset = ahead + ceil_div(capacity - level, requests)
-- Refused or not, the refill moved the state on: it is written (as core.token_bucket returns it).
redis.call('SET', KEYS[1], struct.pack('<i8i8', level, updated), 'PX', ttl_ms(reset))
return finish(allowed, idiv(level, window), reset, retry, updated)
