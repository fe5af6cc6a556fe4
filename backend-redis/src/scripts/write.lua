-- A batch of writes to one group. Raises the group's fence to the highest
-- fence the batch carries, then checks and applies each write on its own,
-- indexing an epoch when it gets its first partial in the group.
-- KEYS: group fence, epoch index, then the epoch hashes the batch touches.
-- ARGV: carried fence, then per write: version, vnode, epoch, index of its
-- hash in KEYS, bytes. Returns {fence, {1 written | 0 refused, ...}}.
local fence = redis.call('GET', KEYS[1]) or '00000000000000000000'
if ARGV[1] > fence then
  redis.call('SET', KEYS[1], ARGV[1])
  fence = ARGV[1]
end
local written = {}
for at = 2, #ARGV, 5 do
  if ARGV[at] < fence then
    written[#written + 1] = 0
  else
    local hash = KEYS[tonumber(ARGV[at + 3])]
    if redis.call('HSET', hash, ARGV[at + 1], ARGV[at + 4]) == 1 and redis.call('HLEN', hash) == 1 then
      redis.call('ZADD', KEYS[2], 0, ARGV[at + 2])
    end
    written[#written + 1] = 1
  end
end
return {fence, written}
