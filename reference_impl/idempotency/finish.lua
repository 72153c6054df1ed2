-- Store a claim's response: the twin of core.finish, guarded by the claim's token.
-- KEYS[1]: the key's record (see claim.lua). ARGV: token, status, headers (JSON), body.
-- Returns {1} when stored; {2, status, headers, body} when the record was already finished (by
-- another holder of the same claim): that response is the one every client must get; {0} when the
-- record is gone or belongs to a newer claim (nothing stored). The record keeps its TTL.
local stored = redis.call('HMGET', KEYS[1], 't', 's')
if stored[1] ~= ARGV[1] then
    return {0}
end
if stored[2] == 'finished' then
    local response = redis.call('HMGET', KEYS[1], 'rs', 'rh', 'rb')
    return {2, response[1], response[2], response[3]}
end
redis.call('HSET', KEYS[1], 's', 'finished', 'l', '0', 'rs', ARGV[2], 'rh', ARGV[3], 'rb', ARGV[4])
return {1}
