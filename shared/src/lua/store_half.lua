-- Appends one half of a direct message (the recipient's copy, or the
-- sender's) to one user's inbox. Everything here is one user's, so it runs
-- in one Redis Cluster slot. (The caller reads the user's sessions with an
-- HGETALL right after it, in the same pipeline.)
--
-- KEYS[1] sb:{u:<user>}:ep     KEYS[2] sb:{u:<user>}:inbox
-- KEYS[3] sb:{u:<user>}:dm:<msg-id>
-- ARGV[1] the record (one field, encoded once by the server)
-- ARGV[2] inbox max length     ARGV[3] inbox max age ms (the key's TTL)
-- ARGV[4] age cut-off: unix ms before which a message is too old
-- ARGV[5] ttl s of KEYS[3]; '0' when the message has no cid (no retry can
--         come, so no idempotency record is read or written)
--
-- Returns {stream-id, duplicate (0|1)}: the stream id `<epoch>-<k>` is seq
-- k + 1; a retried half returns the first store's id and stores nothing.
-- Numbers never pass through Lua's float formatting: ids are strings.
local keep = ARGV[5] ~= '0'
if keep then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    return {prev, 1}
  end
end
local ep = redis.call('GET', KEYS[1])
local id = false
if ep then
  id = redis.call('XADD', KEYS[2], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[2], ep .. '-*', 'm', ARGV[1])
end
if not id then
  -- A new inbox (first message ever, expired, or its epoch was lost): a new
  -- epoch from this Redis's clock (unix ms), and no stale stream under it.
  local t = redis.call('TIME')
  ep = t[1] .. string.sub(string.format('%06d', tonumber(t[2])), 1, 3)
  redis.call('SET', KEYS[1], ep)
  redis.call('DEL', KEYS[2])
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ep .. '-*', 'm', ARGV[1])
end
-- The age bound, checked at every 10th message (a suffix test on the id
-- string, no numbers): when the oldest entry is past the age, the oldest
-- entries past it go, at most 64 at a time.
if string.sub(id, -1) == '0' then
  local cutoff = tonumber(ARGV[4])
  local function old(e)
    local ts = string.match(e[2][2], '^%S+ %S+ %S+ (%d+)')
    return ts and tonumber(ts) < cutoff
  end
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if oldest and old(oldest) then
    for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)) do
      if old(e) then
        redis.call('XDEL', KEYS[2], e[1])
      else
        break
      end
    end
  end
end
-- The TTL is refreshed only when it has run down by a tenth, so most
-- messages propagate no PEXPIRE; the key still outlives its newest message
-- by at least the max age.
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl + math.floor(ttl / 10))
  redis.call('PEXPIRE', KEYS[1], ttl + math.floor(ttl / 10))
end
if keep then
  redis.call('SET', KEYS[3], id, 'EX', ARGV[5])
end
return {id, 0}
