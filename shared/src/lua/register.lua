-- Writes a server's registry entry with a TTL (the backstop if nothing else
-- ever purges it). Returns 1 if the entry existed, 0 if it had to be made:
-- then the server writes its live sessions again (Redis came back empty).
-- The id goes into sb:servers by a separate SADD (another slot).
-- KEYS[1] sb:{s:<id>}:srv
-- ARGV: epoch ws tcp conns cap now-ms ttl-s
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'ws', ARGV[2], 'tcp', ARGV[3],
  'conns', ARGV[4], 'cap', ARGV[5], 'seen', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
return existed
