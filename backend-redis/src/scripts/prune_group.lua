-- Removes up to ARGV[2] epochs below ARGV[1] from one group. KEYS[1] is the
-- group's epoch index; ARGV[3] the group's key prefix. Returns how many
-- epochs it removed.
local epochs = redis.call('ZRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, epoch in ipairs(epochs) do
  redis.call('UNLINK', ARGV[3] .. 'p:' .. epoch)
  redis.call('ZREM', KEYS[1], epoch)
end
return #epochs
