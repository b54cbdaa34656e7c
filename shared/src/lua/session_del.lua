-- Removes one session of one user, but only if the entry is still the one
-- this server and epoch wrote (compare-and-delete): a late clean-up from an
-- old epoch, or a purge, never removes a newer entry. Rewrites the user's
-- server list (deleted with the last session).
-- KEYS[1] sb:{u:<user>}:sess   KEYS[2] sb:{u:<user>}:where
-- ARGV[1] session id   ARGV[2] "server:epoch"
-- Returns 1 when removed, 0 otherwise.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  local left = redis.call('HVALS', KEYS[1])
  if #left == 0 then
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], table.concat(left, ' '))
  end
  return 1
end
return 0
