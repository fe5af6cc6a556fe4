-- Registers a prune before it deletes anything. KEYS: unfinished prunes,
-- the prune count. ARGV: prune id, bound. Returns the ids of the prunes
-- that were unfinished before it.
local older = redis.call('HKEYS', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return older
