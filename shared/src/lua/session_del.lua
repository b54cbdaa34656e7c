-- Removes one session, but only if the entry is still ours (compare-and-delete):
-- a late clean-up from an old epoch never removes a newer entry.
-- KEYS[1] sb:user:{user}  KEYS[2] sb:srvsess:{server}
-- ARGV[1] session id      ARGV[2] "server:epoch"
local removed = 0
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  removed = redis.call('HDEL', KEYS[1], ARGV[1])
end
local epoch = string.match(ARGV[2], ':(%d+)$')
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and epoch and string.sub(held, 1, #epoch + 1) == epoch .. ' ' then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return removed
