-- Removes up to ARGV[2] markers below ARGV[1]. KEYS: markers, sealed.
local epochs = redis.call('ZRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, epoch in ipairs(epochs) do
  redis.call('HDEL', KEYS[1], epoch)
  redis.call('ZREM', KEYS[2], epoch)
end
return #epochs
