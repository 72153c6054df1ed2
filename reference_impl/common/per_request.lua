-- Everything a /v1 request needs from Redis, in one round trip.
-- KEYS[1]  the tenant's usage counter for the current period (hash-tagged by tenant)
-- ARGV[1]  seconds the counter outlives its last increment
-- Returns  the counter after this request.
local used = redis.call('INCR', KEYS[1])
if used == 1 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return used
