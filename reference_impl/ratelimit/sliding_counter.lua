-- Sliding window counter (Cloudflare's estimate): the twin of core.sliding_counter.
-- KEYS: limiter STRING pack('<i8i8i8', current window start µs, its count, previous window's count),
-- usage counter.
-- ARGV: now_us (-1 = TIME), requests, window_us, cost, ttl_slack_ms, usage_ttl_s.
-- Returns {allowed, remaining, reset_us, retry_after_us, usage, decided_us}.
local now = clock(ARGV[1])
local requests, window, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local start = idiv(now, window) * window
local current, previous = 0, 0
local moved = true -- the state differs from the stored one even if the request is refused
local s = redis.call('GET', KEYS[1])
if s then
    local stored, c, p = struct.unpack('<i8i8i8', s)
    if start > stored then
        -- Rolled over: the old current becomes previous only if it is the window just before.
        if start - stored == window then
            previous = c
        end
    else
        start, current, previous = stored, c, p
        moved = false
    end
end

-- previous * (window - elapsed) / window + current + cost <= requests, scaled by window.
local elapsed = now - start
if elapsed < 0 then
    elapsed = 0
end
local used = previous * (window - elapsed) + current * window
local allowed = used + cost * window <= requests * window
if allowed then
    current = current + cost
    used = used + cost * window
end

local retry = 0
if not allowed then
    local slack = requests - current - cost
    local needed = window
    if slack >= 0 and previous > 0 then
        -- Still in this window, once previous * (window - e) <= slack * window.
        needed = window - idiv(slack * window, previous)
    end
    if needed < window then
        retry = start + needed - now
    else
        -- Next window: previous becomes current, current restarts at 0.
        needed = 0
        if current > 0 then
            needed = window - idiv((requests - cost) * window, current)
            if needed < 0 then
                needed = 0
            end
        end
        retry = start + window + needed - now
    end
end

local reset = 0
if current > 0 then
    reset = start + 2 * window - now
elseif previous > 0 then
    reset = start + window - now
end
local remaining = idiv(requests * window - used, window)
if remaining < 0 then
    remaining = 0
end
-- A rollover moves the state on even when the request is refused (core.sliding_counter returns it).
if allowed or moved then
    redis.call('SET', KEYS[1], struct.pack('<i8i8i8', start, current, previous), 'PX', ttl_ms(reset))
end
return finish(allowed, remaining, reset, retry, math.max(now, start))
