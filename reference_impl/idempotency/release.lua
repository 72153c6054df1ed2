-- Unlock an unfinished claim at now_us (unknown outcome): the twin of core.release.
-- KEYS[1]: the key's record (see claim.lua). ARGV: token, now_us. Returns 1 if the lock moved.
local stored = redis.call('HMGET', KEYS[1], 't', 's', 'l')
if stored[1] == ARGV[1] and stored[2] ~= 'finished' and tonumber(stored[3]) > tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'l', ARGV[2])
    return 1
end
return 0
