-- Purges what a server left in Redis. Idempotent: running it twice removes
-- nothing more the second time.
-- KEYS[1] sb:srvsess:{server}  KEYS[2] sb:srv:{server}  KEYS[3] sb:servers
-- ARGV[1] server id  ARGV[2] epoch (ignored by "gone")
-- ARGV[3] "epoch":  remove the sessions of exactly that epoch, and the registry
--                   entry if it still names that epoch (a dead server);
--         "others": remove the sessions of every other epoch (a server that
--                   starts again with a new epoch cleans its previous life);
--         "gone":   remove every epoch's sessions, but only if the registry
--                   entry is gone (its TTL ran out: the server died while no
--                   relay watched it). Checked here, so a server registering
--                   between the relay's sweep and this call keeps its
--                   sessions; returns -1 then, having done nothing.
-- Returns the number of sessions removed.
local server, epoch, mode = ARGV[1], ARGV[2], ARGV[3]
if mode == 'gone' and redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local entries = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #entries, 2 do
  local session, held = entries[i], entries[i + 1]
  local sep = string.find(held, ' ', 1, true)
  if sep then
    local e = string.sub(held, 1, sep - 1)
    local user = string.sub(held, sep + 1)
    local match = (mode == 'gone') or (e == epoch)
    if mode == 'others' then match = not match end
    if match then
      local ukey = 'sb:user:' .. user
      if redis.call('HGET', ukey, session) == server .. ':' .. e then
        redis.call('HDEL', ukey, session)
        removed = removed + 1
      end
      redis.call('HDEL', KEYS[1], session)
    end
  else
    redis.call('HDEL', KEYS[1], session)
  end
end
if mode == 'gone' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], server)
elseif mode == 'epoch' and redis.call('HGET', KEYS[2], 'epoch') == epoch then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], server)
end
return removed
