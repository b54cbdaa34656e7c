-- Adds one session of one user, unless the user already holds the most
-- sessions allowed across the cluster (a session already recorded is
-- written again whatever the count), and writes the user's server list.
-- KEYS[1] sb:{u:<user>}:sess   KEYS[2] sb:{u:<user>}:where
-- ARGV[1] session id   ARGV[2] "server:epoch"   ARGV[3] max sessions (0: no limit)
-- Returns 1 when recorded, 0 when refused.
local max = tonumber(ARGV[3])
if max > 0 and redis.call('HLEN', KEYS[1]) >= max
    and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], table.concat(redis.call('HVALS', KEYS[1]), ' '))
return 1
