-- Prepended to every rate-limit script and to concurrency.lua by redis_store.py (SCRIPT LOAD sees one script).
-- Redis Lua numbers are doubles. Every value here is an integer below 2^53 (core.Policy bounds
-- requests * window_us), divisions go through idiv, and numbers are written back with int() or
-- packed as int64s: tostring() keeps only 14 significant digits, which would corrupt microsecond
-- timestamps.
-- A state of several integers is one STRING of little-endian int64s (struct.pack('<i8...')):
-- a GET and a `SET ... PX` cost Redis about two thirds of an HMGET, an HSET and a PEXPIRE, and
-- packing skips formatting and parsing decimals (redis_store.PACKED_STATES unpacks the same way).

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

-- The limiter key (KEYS[1]) lives while its state still matters (reset_us) plus slack for app
-- clocks ahead of Redis's (ARGV[5], ms); after that an absent key decides exactly as the expired
-- state would. Each write of the state carries its expiry (`SET ... PX ttl_ms(reset_us)`, or a
-- PEXPIRE after RPUSH). A decision that writes nothing (a refusal that did not move the state
-- on) leaves the expiry too: what is stored stops mattering at the same time as when it was
-- written (a refused log only drops entries that no longer count), so a refresh would set the
-- same deadline again (to the ms on Redis's clock; with callers' clocks, to within how far they
-- disagree, which is what the slack is for).
local function ttl_ms(reset_us)
    return int(ceil_div(reset_us, 1000) + tonumber(ARGV[5]))
end

-- The concurrent-requests limiter, the twin of core.acquire: take one of `limit` slots of the lease
-- ZSET `key` {lease_id: expiry µs} until now + lease_us. Returns allowed, in_flight, retry_after_us.
-- The key lives until its last lease expires plus slack (ARGV[5] in both scripts that call it).
local function acquire_lease(key, now, lease_id, limit, lease_us)
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
        redis.call('PEXPIRE', key, ttl_ms(tonumber(last) - now))
    end
    return allowed, in_flight, retry
end

-- Common tail of the limiter scripts. KEYS[2] is the usage counter, ARGV[6] its TTL in s.
-- Usage counts every request, allowed or not, in the same round trip.
-- decided_us is the time the decision counts at (invariants.decision_time): the clock, or the newer
-- time the state already holds when the clock stepped back. It costs the reply one integer; the
-- service shows it only in lab mode, where the checker judges windows and refill on it.
-- With a third key (a tenant with a concurrency limit), a request the limiter admits also takes a
-- lease at decided_us in the same round trip: KEYS[3] the lease ZSET, ARGV[7] lease_id, ARGV[8]
-- limit, ARGV[9] lease_us; the reply then ends with {leased, in_flight, lease_retry_after_us}.
local function finish(allowed, remaining, reset_us, retry_after_us, decided_us)
    local used = redis.call('INCR', KEYS[2])
    if used == 1 then
        redis.call('EXPIRE', KEYS[2], ARGV[6])
    end
    local reply = {allowed and 1 or 0, remaining, reset_us, retry_after_us, used, decided_us}
    if allowed and KEYS[3] then
        local leased, in_flight, retry = acquire_lease(KEYS[3], decided_us, ARGV[7], tonumber(ARGV[8]),
                                                       tonumber(ARGV[9]))
        reply[7], reply[8], reply[9] = leased and 1 or 0, in_flight, retry
    end
    return reply
end
