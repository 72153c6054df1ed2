-- Claim-or-read: the twin of core.decide, in one round trip.
-- KEYS[1]: the key's record, a HASH {f: fingerprint, s: state, l: locked_until_us, e: expires_at_us,
--          t: token, rs/rh/rb: response status, headers (JSON), body}.
-- ARGV: now_us, fingerprint, lock_timeout_us, retention_us, conflict_retry_after_s, new token,
--       ttl_slack_ms.
-- Returns {outcome, state, token, retry_after_s, status, headers, body}; fields an outcome does not
-- use are ''.
-- Every number is an integer below 2^53 (core.Policy bounds them), exact in Lua's doubles; numbers are
-- written back with int(): tostring() keeps only 14 significant digits.

local function int(x)
    return string.format('%d', x)
end

-- ceil(a / b) for integers a >= 0, b > 0, exact: the double quotient can round across an integer.
local function ceil_div(a, b)
    local q = math.ceil(a / b)
    if q * b < a then
        q = q + 1
    elseif (q - 1) * b >= a then
        q = q - 1
    end
    return q
end

local now, fingerprint = tonumber(ARGV[1]), ARGV[2]
local lock, retention, retry_cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local slack_ms = tonumber(ARGV[7])
local stored = redis.call('HMGET', KEYS[1], 'f', 's', 'l', 'e', 't')
local state, locked, expires, token = stored[2], tonumber(stored[3]), tonumber(stored[4]), stored[5]

-- Redis forgets the record once the core would call it expired (plus slack for clocks apart); the
-- script still checks, since the caller's clock is the one that decides.
local function keep_until(expires_at)
    redis.call('PEXPIRE', KEYS[1], int(ceil_div(expires_at - now, 1000) + slack_ms))
end

if not stored[1] or now >= expires then
    locked, expires, token = now + lock, now + retention, ARGV[6]
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'f', fingerprint, 's', 'started', 'l', int(locked), 'e', int(expires), 't', token)
    keep_until(expires)
    return {'execute', 'started', token, '', '', '', ''}
end
if stored[1] ~= fingerprint then
    return {'mismatch', '', '', '', '', '', ''}
end
if state == 'finished' then
    local response = redis.call('HMGET', KEYS[1], 'rs', 'rh', 'rb')
    return {'replay', state, '', '', response[1], response[2], response[3]}
end
if now < locked then
    -- Never send the client past the moment the claim becomes recoverable.
    return {'conflict', '', '', int(math.min(retry_cap, ceil_div(locked - now, 1000000))), '', '', ''}
end
locked = now + lock
if locked > expires then
    expires = locked
end
redis.call('HSET', KEYS[1], 'l', int(locked), 'e', int(expires))
keep_until(expires)
return {'recover', state, token, '', '', '', ''}
