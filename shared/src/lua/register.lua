-- Writes a server's registry entry with a TTL (the backstop if nothing else
-- ever purges it). Returns 1 if the entry existed, 0 if it had to be made:
-- then the server writes its live sessions again (Redis came back empty).
-- KEYS[1] sb:srv:{id}  KEYS[2] sb:servers
-- ARGV: id epoch ws tcp conns cap now-ms ttl-s
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'ws', ARGV[3], 'tcp', ARGV[4],
  'conns', ARGV[5], 'cap', ARGV[6], 'seen', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('SADD', KEYS[2], ARGV[1])
return existed
