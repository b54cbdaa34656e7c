-- Advances a device's ACK cursor, never backwards.
-- KEYS[1] sb:{u:<user>}:cur:<device>  ARGV[1] seq  ARGV[2] ttl seconds
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = tonumber(ARGV[1])
if seq > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return seq
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return cur
