-- Unregisters a finished prune, and the older unfinished prunes it
-- covers (the caller already took their right to delete away in every
-- group), and counts the change: a cluster gate that read the prune count
-- before this prune ended checks the partials again.
-- KEYS: unfinished prunes, the prune count. ARGV: the prune ids.
redis.call('INCR', KEYS[2])
redis.call('HDEL', KEYS[1], unpack(ARGV))
return 1
