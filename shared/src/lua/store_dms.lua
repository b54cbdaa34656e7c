-- Stores a batch of direct messages in one call and reads the sessions of
-- every user it touched. On one Redis (or Sentinel's master) one call takes
-- a whole batch, both halves of every message; in Redis Cluster one call
-- per user (all its KEYS in that user's slot) takes that user's halves.
--
-- ARGV[1] inbox max length
-- ARGV[2] inbox TTL ms (the max age and a tenth)
-- ARGV[3] `kept` TTL ms (a tenth of the max age)
-- ARGV[4] age cut-off: unix ms before which a message is too old
-- ARGV[5] ttl s of the idempotency records
-- ARGV[6] U, the number of users; user u (1-based) owns
--         KEYS[4u-3] sb:{u:<user>}:ep     KEYS[4u-2] sb:{u:<user>}:inbox
--         KEYS[4u-1] sb:{u:<user>}:kept   KEYS[4u]   sb:{u:<user>}:where
-- ARGV[7..] the ops, in order, 5 ARGVs each:
--         kind ('d' a whole message, 'h' one half),
--         user index (the recipient for 'd'; the inbox owner for 'h'),
--         second user index (the sender for 'd'; '0' for a note to self or
--         an 'h'),
--         record key index into KEYS ('0' for a message without cid: no
--         retry can come, so no record is read or written),
--         the stream record (one field, encoded once by the server).
--         A record key (`sb:{u:<owner>}:dm:<msg-id>`, the recipient's for a
--         'd') holds the ids the message got: '<to-id> <from-id>' after a
--         'd', '<id>' after an 'h'.
--
-- Returns {op replies..., server lists...}: per op {to-id, to-dup,
-- from-id ('' when none), from-dup}, then per user its `where` (the
-- locations of its sessions, nil when none). A stream id `<epoch>-<k>` is seq k + 1; a retried op answers the
-- first ids and stores nothing. Numbers never pass through Lua's float
-- formatting: ids are strings.
local max_len, inbox_ttl, kept_ttl = ARGV[1], ARGV[2], ARGV[3]
local cutoff, rec_ttl = tonumber(ARGV[4]), ARGV[5]
local nusers = tonumber(ARGV[6])
local nops = (#ARGV - 6) / 5
-- One MGET up front: every user's epoch, `kept` and `where`, and every
-- record.
local ask = {}
for u = 1, nusers do
  ask[3 * u - 2] = KEYS[4 * u - 3]
  ask[3 * u - 1] = KEYS[4 * u - 1]
  ask[3 * u] = KEYS[4 * u]
end
for k = 4 * nusers + 1, #KEYS do
  ask[#ask + 1] = KEYS[k]
end
local got = redis.call('MGET', unpack(ask))
local users = {}
for u = 1, nusers do
  users[u] = {ep = got[3 * u - 2], kept = got[3 * u - 1], where = got[3 * u]}
end
-- Record key index -> its value (false: none), kept up to date below so
-- that a message twice in one call is stored once.
local recs = {}
for k = 4 * nusers + 1, #KEYS do
  recs[k] = got[k - nusers]
end

-- Appends `rec` to user u's inbox; returns its stream id.
local function append(u, rec)
  local s = users[u]
  local k = 4 * u - 4
  local id = false
  if s.ep then
    id = redis.call('XADD', KEYS[k + 2], 'NOMKSTREAM', 'MAXLEN', '~', max_len, s.ep .. '-*', 'm', rec)
  end
  if not id then
    -- A new inbox (first message ever, expired, or its epoch was lost): a
    -- new epoch from this Redis's clock (unix ms), and no stale stream.
    local t = redis.call('TIME')
    s.ep = t[1] .. string.sub(string.format('%06d', tonumber(t[2])), 1, 3)
    s.kept = false
    redis.call('SET', KEYS[k + 1], s.ep)
    redis.call('DEL', KEYS[k + 2])
    id = redis.call('XADD', KEYS[k + 2], 'MAXLEN', '~', max_len, s.ep .. '-*', 'm', rec)
  end
  -- The age bound, checked at every 10th message (a suffix test on the id
  -- string): when the oldest entry is past the age, the oldest entries past
  -- it go, at most 64 at a time.
  if string.sub(id, -1) == '0' then
    local function old(e)
      local ts = string.match(e[2][2], '^%S+ %S+ %S+ (%d+)')
      return ts and tonumber(ts) < cutoff
    end
    local oldest = redis.call('XRANGE', KEYS[k + 2], '-', '+', 'COUNT', 1)[1]
    if oldest and old(oldest) then
      for _, e in ipairs(redis.call('XRANGE', KEYS[k + 2], '-', '+', 'COUNT', 64)) do
        if old(e) then
          redis.call('XDEL', KEYS[k + 2], e[1])
        else
          break
        end
      end
    end
  end
  -- The TTLs are refreshed only when `kept` is gone (once per tenth of the
  -- max age per user), so most messages propagate no PEXPIRE: the inbox
  -- keys live the max age and a tenth, `kept` a tenth, so while `kept` is
  -- there the inbox outlives any message stored now by the max age.
  if not s.kept then
    redis.call('PEXPIRE', KEYS[k + 2], inbox_ttl)
    redis.call('PEXPIRE', KEYS[k + 1], inbox_ttl)
    redis.call('SET', KEYS[k + 3], '1', 'PX', kept_ttl)
    s.kept = '1'
  end
  return id
end

-- Writes a record and remembers it for the rest of this call.
local function remember(rk, rkey, value)
  redis.call('SET', rkey, value, 'EX', rec_ttl)
  if rk then
    recs[rk] = value
  end
end

-- One half with its own record (record key index `rk` or false, its name
-- `rkey`, its value as read `prev`): its id and 1 when it was stored
-- before (0 when now).
local function half(u, rk, rkey, prev, rec)
  if prev then
    return string.match(prev, '^%S+'), 1
  end
  local id = append(u, rec)
  if rkey then
    remember(rk, rkey, id)
  end
  return id, 0
end

local out = {}
for i = 1, nops do
  local a = 6 + 5 * (i - 1)
  local kind, to, from, rk, rec = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), ARGV[a + 5]
  local rkey, prev = false, false
  if rk ~= 0 then
    rkey, prev = KEYS[rk], recs[rk]
  else
    rk = false
  end
  if kind == 'h' or from == 0 then
    local id, dup = half(to, rk, rkey, prev, rec)
    out[i] = {id, dup, '', dup}
  elseif prev then
    local tid, fid = string.match(prev, '^(%S+) ?(%S*)')
    if fid ~= '' then
      out[i] = {tid, 1, fid, 1}
    else
      -- Only the recipient's half is stored (an 'h' before, as a crash
      -- test hook does): complete the sender's as a half with its own
      -- record, named like the recipient's under the sender's tag (one
      -- Redis here, so any slot will do).
      local fkey = string.sub(KEYS[4 * from - 3], 1, -3) .. string.match(rkey, 'dm:.*$')
      local id, dup = half(from, false, fkey, redis.call('GET', fkey), rec)
      out[i] = {tid, 1, id, dup}
    end
  else
    local tid = append(to, rec)
    local fid = append(from, rec)
    if rkey then
      remember(rk, rkey, tid .. ' ' .. fid)
    end
    out[i] = {tid, 0, fid, 0}
  end
end
for u = 1, nusers do
  out[nops + u] = users[u].where
end
return out
