-- Fixed window: the twin of core.fixed_window.
-- KEYS: limiter STRING pack('<i8i8', window start µs, count), usage counter.
-- ARGV: now_us (-1 = TIME), requests, window_us, cost, ttl_slack_ms, usage_ttl_s.
-- Returns {allowed, remaining, reset_us, retry_after_us, usage, decided_us}.
local now = clock(ARGV[1])
local requests, window, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local start = idiv(now, window) * window
local count = 0
local s = redis.call('GET', KEYS[1])
if s then
    local stored, n = struct.unpack('<i8i8', s)
    -- Same window, or the clock stepped back into an older one: keep counting the newest.
    if stored >= start then
        start, count = stored, n
    end
end

local allowed = count + cost <= requests
local reset = start + window - now
local retry = 0
if allowed then
    count = count + cost
    redis.call('SET', KEYS[1], struct.pack('<i8i8', start, count), 'PX', ttl_ms(reset))
else
    retry = reset
end
-- A stored window newer than the clock's is the one this request counted in.
return finish(allowed, requests - count, reset, retry, math.max(now, start))
