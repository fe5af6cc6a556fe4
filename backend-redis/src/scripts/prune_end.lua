-- Unregisters a finished prune, and any older unfinished prune whose bound
-- it covers (its pruner died: everything it would delete is deleted), and
-- counts the change: a cluster gate that read the prune count before this
-- prune ended checks the partials again.
-- KEYS: unfinished prunes, the prune count. ARGV: prune id, bound, then the
-- ids that were unfinished when this prune began.
redis.call('INCR', KEYS[2])
redis.call('HDEL', KEYS[1], ARGV[1])
for at = 3, #ARGV do
  local bound = redis.call('HGET', KEYS[1], ARGV[at])
  if bound and bound <= ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[at]) end
end
return 1
