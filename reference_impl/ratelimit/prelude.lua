-- Prepended to every rate-limit script by redis_store.py (SCRIPT LOAD sees one script).
-- Redis Lua numbers are doubles. Every value here is an integer below 2^53 (core.Policy bounds
-- requests * window_us), divisions go through idiv, and numbers are written back with int():
-- tostring() keeps only 14 significant digits, which would corrupt microsecond timestamps.

-- floor(a / b) for integers, exact: the double quotient can round up across an integer.
local function idiv(a, b)
    local q = math.floor(a / b)
    if q * b > a then
        q = q - 1
    elseif (q + 1) * b <= a then
        q = q + 1
    end
    return q
end

local function ceil_div(a, b)
    return -idiv(-a, b)
end

local function int(x)
    return string.format('%d', x)
end

-- The caller's clock in µs, or Redis's own (TIME) when it passes -1.
local function clock(arg)
    local now = tonumber(arg)
    if now < 0 then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    return now
end

-- Common tail of the limiter scripts. KEYS[1] is the limiter key, KEYS[2] the usage counter;
-- ARGV[5] is the TTL slack in ms, ARGV[6] the usage counter's TTL in s.
-- The limiter key lives while its state still matters (reset_us) plus slack for app clocks
-- ahead of Redis's; after that an absent key decides exactly as the expired state would.
-- Usage counts every request, allowed or not, in the same round trip.
-- decided_us is the time the decision counts at (invariants.decision_time): the clock, or the newer
-- time the state already holds when the clock stepped back. It costs the reply one integer; the
-- service shows it only in lab mode, where the checker judges windows and refill on it.
local function finish(allowed, remaining, reset_us, retry_after_us, decided_us)
    redis.call('PEXPIRE', KEYS[1], int(ceil_div(reset_us, 1000) + tonumber(ARGV[5])))
    local used = redis.call('INCR', KEYS[2])
    if used == 1 then
        redis.call('EXPIRE', KEYS[2], ARGV[6])
    end
    return {allowed and 1 or 0, remaining, reset_us, retry_after_us, used, decided_us}
end
