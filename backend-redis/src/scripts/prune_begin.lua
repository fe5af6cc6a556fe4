-- Registers a prune before it deletes anything (it is already allowed in
-- every group). KEYS: unfinished prunes, the prune count. ARGV: prune id,
-- bound. Returns the prunes that were unfinished before it, as id, bound,
-- id, bound...
local older = redis.call('HGETALL', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return older
