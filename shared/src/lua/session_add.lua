-- Adds one session of one user on one server (epoch).
-- KEYS[1] sb:user:{user}      ARGV[1] session id   ARGV[2] "server:epoch"
-- KEYS[2] sb:srvsess:{server} ARGV[3] epoch        ARGV[4] user
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
return 1
