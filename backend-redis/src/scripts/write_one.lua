-- One write to one group: the batch script's work for a single write,
-- without its bookkeeping, for the common lone writer. KEYS: group fence,
-- epoch index, epoch hash. ARGV: carried fence, version, vnode, epoch,
-- bytes. Returns the group's fence; the write happened unless the version
-- is below it.
local fence = redis.call('GET', KEYS[1]) or '00000000000000000000'
if ARGV[1] > fence then
  redis.call('SET', KEYS[1], ARGV[1])
  fence = ARGV[1]
end
if ARGV[2] < fence then
  return fence
end
if redis.call('HSET', KEYS[3], ARGV[3], ARGV[5]) == 1 and redis.call('HLEN', KEYS[3]) == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[4])
end
return fence
