-- Deletes a server's registry entry if it still names this epoch
-- (compare-and-delete), so the purge of a dead life never removes the entry
-- of the server's next one.
-- KEYS[1] sb:{s:<id>}:srv   ARGV[1] epoch
-- Returns 1 when deleted, 0 otherwise.
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
