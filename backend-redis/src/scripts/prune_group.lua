-- Removes up to ARGV[2] epochs below ARGV[1] from one group, if the prune
-- ARGV[4] may still delete there. KEYS[1] is the group's epoch index,
-- KEYS[2] the prunes allowed in the group; ARGV[3] the group's key prefix.
-- Returns how many epochs it removed, or -1 when the prune was finished
-- (and unregistered) by a later prune: the epochs it would delete may hold
-- partials written and sealed since, which are not its to delete.
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then return -1 end
local epochs = redis.call('ZRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, epoch in ipairs(epochs) do
  redis.call('UNLINK', ARGV[3] .. 'p:' .. epoch)
  redis.call('ZREM', KEYS[1], epoch)
end
return #epochs
