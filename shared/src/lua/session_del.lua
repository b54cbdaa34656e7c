-- Removes one session of one user, but only if the entry is still the one
-- this server and epoch wrote (compare-and-delete): a late clean-up from an
-- old epoch, or a purge, never removes a newer entry.
-- KEYS[1] sb:{u:<user>}:sess   ARGV[1] session id   ARGV[2] "server:epoch"
-- Returns 1 when removed, 0 otherwise.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
