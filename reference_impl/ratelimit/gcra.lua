-- GCRA: the twin of core.gcra.
-- KEYS: limiter STRING (theoretical arrival time, µs, decimal), usage counter.
-- ARGV: now_us (-1 = TIME), requests, window_us, cost, ttl_slack_ms, usage_ttl_s.
-- Returns {allowed, remaining, reset_us, retry_after_us, usage, decided_us}.
local now = clock(ARGV[1])
local requests, window, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local interval = idiv(window, requests)
local burst = requests * interval
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
    stored = tonumber(stored)
    if stored > tat then
        tat = stored
    end
end

local new_tat = tat + cost * interval
local allowed = new_tat - now <= burst
local retry = 0
if allowed then
    tat = new_tat
    redis.call('SET', KEYS[1], int(tat), 'PX', ttl_ms(tat - now))
else
    retry = new_tat - burst - now
end
local remaining = idiv(burst - (tat - now), interval)
if remaining < 0 then
    remaining = 0
end
return finish(allowed, remaining, tat - now, retry, now)
