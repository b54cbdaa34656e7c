-- Stores one direct message, then says where to push it. One round trip:
-- the sender is told OK only after this has run (and, with appendfsync
-- always, been written to disk).
--
-- KEYS[1] sb:seq:{to}    KEYS[2] sb:inbox:{to}    KEYS[3] sb:user:{to}
-- KEYS[4] sb:seq:{from}  KEYS[5] sb:inbox:{from}  KEYS[6] sb:user:{from}
-- KEYS[7] sb:cid:{from}:{cid} (any key when there is no cid)
-- ARGV[1] msg id   ARGV[2] from   ARGV[3] to   ARGV[4] unix ms   ARGV[5] text
-- ARGV[6] inbox max length   ARGV[7] inbox max age ms
-- ARGV[8] cid ('' for none)  ARGV[9] cid ttl s
-- ARGV[10] a fresh inbox epoch, used if an inbox starts now
--
-- Returns {0, id, seq-to, seq-from, ts, to-sessions, from-sessions} for a new
-- message, {1, "id seq-to seq-from ts"} for a retried cid (stored once).
if ARGV[8] ~= '' then
  local prev = redis.call('GET', KEYS[7])
  if prev then
    return {1, prev}
  end
end

local now = tonumber(ARGV[4])
local maxage = tonumber(ARGV[7])

local function append(seqkey, inbox)
  local n = redis.call('HINCRBY', seqkey, 'n', 1)
  if n == 1 then
    -- A new inbox (first message ever, or the counter was lost): new epoch,
    -- and no stale stream may sit under it.
    redis.call('HSET', seqkey, 'ep', ARGV[10])
    redis.call('DEL', inbox)
  end
  redis.call('XADD', inbox, 'MAXLEN', '~', ARGV[6], n .. '-0',
    'id', ARGV[1], 'f', ARGV[2], 't', ARGV[3], 'ts', ARGV[4], 'x', ARGV[5])
  -- The age bound, checked at every 32nd message so that it costs next to
  -- nothing (reading entries into Lua is the dearest part of this script):
  -- the oldest entries past the age go, at most 64 at a time.
  if n % 32 == 0 then
    local oldest = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1)
    if oldest[1] and tonumber(oldest[1][2][8]) < now - maxage then
      for _, e in ipairs(redis.call('XRANGE', inbox, '-', '+', 'COUNT', 64)) do
        if tonumber(e[2][8]) < now - maxage then
          redis.call('XDEL', inbox, e[1])
        else
          break
        end
      end
    end
  end
  redis.call('PEXPIRE', inbox, maxage)
  return n
end

local seq_to = append(KEYS[1], KEYS[2])
local seq_from = seq_to
if ARGV[2] ~= ARGV[3] then
  seq_from = append(KEYS[4], KEYS[5])
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[7], ARGV[1] .. ' ' .. seq_to .. ' ' .. seq_from .. ' ' .. ARGV[4],
    'EX', ARGV[9])
end
return {0, ARGV[1], seq_to, seq_from, ARGV[4],
  redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[6])}
