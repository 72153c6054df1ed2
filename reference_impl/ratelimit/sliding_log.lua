-- Sliding window log: the twin of core.sliding_log.
-- KEYS: limiter LIST of admitted times (µs, oldest first, one per unit of cost), usage counter.
-- ARGV: now_us (-1 = TIME), requests, window_us, cost, ttl_slack_ms, usage_ttl_s.
-- Returns {allowed, remaining, reset_us, retry_after_us, usage, decided_us}.
local now = clock(ARGV[1])
local requests, window, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local key = KEYS[1]

-- Entries are stamped max(now, newest) so the list stays sorted when the clock steps back.
local t = now
local newest = redis.call('LINDEX', key, -1)
if newest and tonumber(newest) > t then
    t = tonumber(newest)
end

-- Entries that left the window (t - window, t] sit at the head of the sorted list.
local horizon = t - window
while true do
    local head = redis.call('LINDEX', key, 0)
    if not head or tonumber(head) > horizon then
        break
    end
    redis.call('LPOP', key)
end

local n = redis.call('LLEN', key)
local allowed = n + cost <= requests
local retry, reset = 0, 0
if allowed then
    local stamp = int(t)
    for _ = 1, cost do
        redis.call('RPUSH', key, stamp)
    end
    n = n + cost
    reset = t + window - now
    redis.call('PEXPIRE', key, ttl_ms(reset))
else
    -- The oldest entries must age out until `cost` more fit; the last of them sets the wait.
    retry = tonumber(redis.call('LINDEX', key, n + cost - requests - 1)) + window - now
    -- The newest entry is still the one read above (a refusal leaves n > 0 entries).
    reset = tonumber(newest) + window - now
end
return finish(allowed, requests - n, reset, retry, t)
