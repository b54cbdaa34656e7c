-- Purges a server whose registry entry is gone (its TTL ran out: it died
-- while no relay watched it), every epoch of it. The check that the entry is
-- still gone is inside the script, so a server that registers again between
-- the relay's sweep reading the registry and this call keeps its sessions.
-- Idempotent.
-- KEYS[1] sb:srvsess:{server}  KEYS[2] sb:srv:{server}  KEYS[3] sb:servers
-- ARGV[1] server id
-- Returns the number of sessions removed, or -1 (nothing done) when the
-- registry entry exists.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local server = ARGV[1]
local entries = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #entries, 2 do
  local session, held = entries[i], entries[i + 1]
  local sep = string.find(held, ' ', 1, true)
  if sep then
    local e = string.sub(held, 1, sep - 1)
    local ukey = 'sb:user:' .. string.sub(held, sep + 1)
    if redis.call('HGET', ukey, session) == server .. ':' .. e then
      redis.call('HDEL', ukey, session)
      removed = removed + 1
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], server)
return removed
